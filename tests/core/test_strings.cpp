#include <gtest/gtest.h>

#include <filesystem>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {
namespace {

TEST(Strings, Levenshtein) {
  EXPECT_EQ(levenshtein("", ""), 0u);
  EXPECT_EQ(levenshtein("kitten", "sitting"), 3u);
  EXPECT_EQ(levenshtein("abc", ""), 3u);
}

TEST(Strings, ClosestMatchSuggestsNearKeysOnly) {
  std::vector<std::string> keys = {"optim.lr", "optim.eps", "train.epochs"};
  EXPECT_EQ(closest_match("optim.lr_rate", keys), "optim.lr");
  EXPECT_EQ(closest_match("train.epoch", keys), "train.epochs");
  EXPECT_EQ(closest_match("completely.unrelated_thing", keys), "");
}

TEST(Strings, SplitJoinTrim) {
  EXPECT_EQ(split("a.b..c", '.'), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_EQ(join({"x", "y"}, ", "), "x, y");
  EXPECT_EQ(trim("  a b \n"), "a b");
}

TEST(Strings, Utf8Validation) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("h\xc3\xa9llo \xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xff"), 2u);            // never valid
  EXPECT_EQ(find_invalid_utf8("ab\xc3"), 2u);            // truncated sequence
  EXPECT_EQ(find_invalid_utf8("\xc0\xaf"), 0u);          // overlong '/'
  EXPECT_EQ(find_invalid_utf8("x\xed\xa0\x80"), 1u);     // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("\xf4\x90\x80\x80"), 0u);  // past U+10FFFF
}

TEST(Strings, ExcerptEscapesAndCuts) {
  EXPECT_EQ(excerpt("a\nb\x01", 60), "a\\nb\\x01");
  EXPECT_EQ(excerpt(std::string(100, 'z'), 10), std::string(10, 'z') + "...");
}

TEST(Strings, AtomicWriteAndReadBack) {
  auto dir = std::filesystem::temp_directory_path() / "sftgo_test_strings";
  std::filesystem::create_directories(dir);
  auto path = (dir / "sub" / "f.txt").string();
  write_file_atomic(path, "first");
  write_file_atomic(path, "second");
  EXPECT_EQ(read_file(path), "second");
  for (auto& e : std::filesystem::directory_iterator(dir / "sub"))
    EXPECT_EQ(e.path().filename(), "f.txt") << "temporary file left behind";
  std::filesystem::remove_all(dir);
}

TEST(Strings, ReadFileErrorsNameThePath) {
  try {
    read_file("/nonexistent/sftgo/file.txt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/sftgo/file.txt"), std::string::npos);
  }
  EXPECT_THROW(read_file("/tmp"), Error);
}

}  // namespace
}  // namespace sftgo
