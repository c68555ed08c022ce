// The byte-level alphabet, Rust-compatible lossy UTF-8, and the regex rewrite for PCRE2.
#include <gtest/gtest.h>

#include "byte_level.h"
#include "pretokenizer.h"

namespace sftgo::tok {
namespace {

TEST(ByteLevel, AlphabetIsABijection) {
  for (int b = 0; b < 256; ++b) EXPECT_EQ(codepoint_to_byte(byte_to_codepoint(static_cast<uint8_t>(b))), b);
  EXPECT_EQ(byte_to_codepoint(' '), 0x120u);   // "Ġ"
  EXPECT_EQ(byte_to_codepoint('\n'), 0x10Au);  // "Ċ"
  EXPECT_EQ(byte_to_codepoint('a'), static_cast<uint32_t>('a'));
  EXPECT_EQ(codepoint_to_byte(0x4E00), -1);
  std::string raw;
  EXPECT_TRUE(spelled_to_bytes(bytes_to_spelled(" hi\n\xff"), raw));
  EXPECT_EQ(raw, " hi\n\xff");
  EXPECT_FALSE(spelled_to_bytes("\xe4\xb8\x80", raw));  // U+4E00 is no stand-in
  EXPECT_EQ(decoder_bytes("<|eot_id|>"), "<|eot_id|>");
  EXPECT_EQ(decoder_bytes("a b"), "a b");  // space is no stand-in: the spelling's own bytes
}

std::string lossy(std::string_view s) {
  std::string out;
  append_utf8_lossy(out, s);
  return out;
}

TEST(ByteLevel, LossyMatchesRust) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("ok \xc3\xa9"), "ok \xc3\xa9");
  EXPECT_EQ(lossy("\xe2"), r);
  EXPECT_EQ(lossy("\xe2\x82"), r);  // truncated 3-byte: one replacement
  EXPECT_EQ(lossy("\xe2\x82"
                  "A"),
            r + "A");
  EXPECT_EQ(lossy("\xf0\x80\x80"), r + r + r);  // F0 needs 90..BF next
  EXPECT_EQ(lossy("\xed\xa0\x80"), r + r + r);  // surrogates are invalid
  EXPECT_EQ(lossy("\xf4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(lossy("\xc0\xaf"), r + r);  // overlong
  EXPECT_EQ(lossy("\xf0\x9f\x98"), r);
  EXPECT_EQ(lossy("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");
  EXPECT_EQ(lossy("\x80\xbf"), r + r);
  EXPECT_EQ(lossy(std::string("\0", 1)), std::string("\0", 1));
}

TEST(Pretokenizer, RewritesClassesForOniguruma) {
  const std::string t = SplitRegex::translate_pattern(R"(\s+(?!\S)|[^\s\p{L}]+|\p{N}{1,3}|[]\s])");
  EXPECT_EQ(t.find("\\s"), std::string::npos) << t;
  EXPECT_NE(t.find("[^\\x{9}-"), std::string::npos) << t;  // \S outside a class
  EXPECT_NE(t.find("\\p{L}\\x{1c89}"), std::string::npos) << t;
  EXPECT_NE(t.find("[]\\x{9}"), std::string::npos) << t;           // ']' first in a class is a member
  EXPECT_EQ(SplitRegex::translate_pattern(R"(a\\s)"), R"(a\\s)");  // escaped backslash, then a letter
}

TEST(Pretokenizer, SplitsLikeHf) {
  SplitRegex re;
  re.compile(R"('s|\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", false, "test");
  std::vector<std::string> pieces;
  re.split("it's  12345 \xc2\x85x", [&](std::string_view p) { pieces.emplace_back(p); });
  EXPECT_EQ(pieces, (std::vector<std::string>{"it", "'s", " ", " ", "123", "45", " ", "\xc2\x85", "x"}));
  SplitRegex lit;
  lit.compile("--", true, "test");
  pieces.clear();
  lit.split("a--b", [&](std::string_view p) { pieces.emplace_back(p); });
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "--", "b"}));
}

}  // namespace
}  // namespace sftgo::tok
