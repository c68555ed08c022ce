// Bad tokenizer files give one clear sftgo::Error naming the file and what was expected; never a crash.
#include <gtest/gtest.h>

#include "sftgo/core/error.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "test_helpers.h"

namespace sftgo {
namespace {

// Loads `json` from a temp tokenizer.json; expects an Error of `kind` whose message holds the path
// and `needle`.
void expect_load_error(const std::string& json, const std::string& needle, ErrorKind kind = ErrorKind::kTokenizer) {
  test::TempDir dir;
  const std::string path = dir.write("tokenizer.json", json);
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "no error; expected one mentioning: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(e.message().find(path), std::string::npos) << e.message();
    EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
  }
}

std::string tiny_json() { return test::slurp(test::tiny_dir() + "/tokenizer.json"); }

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << "fixture lacks: " << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

const char* kPre =
    R"("pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\s+|\\S+"},
       "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
       "decoder": {"type": "ByteLevel"})";

std::string minimal(const std::string& model) { return std::string("{") + kPre + ", \"model\": " + model + "}"; }

TEST(TokenizerErrors, MissingFileAndDirectory) {
  try {
    Tokenizer::load("/nonexistent/dir/tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(e.message().find("/nonexistent/dir/tokenizer.json"), std::string::npos);
  }
  test::TempDir empty;
  try {
    Tokenizer::load(empty.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(e.message().find("no tokenizer.json"), std::string::npos) << e.message();
  }
}

TEST(TokenizerErrors, CorruptJson) {
  expect_load_error("", "not valid JSON");
  expect_load_error("{\"model\": {\"vocab\": {\"a\": 0", "not valid JSON");
  expect_load_error(tiny_json().substr(0, 3000), "not valid JSON");
  expect_load_error("[1, 2]", "top level must be a JSON object");
  expect_load_error(std::string(100000, '['), "nested deeper");
  expect_load_error("{\"a\": \"\xff\"}", "not valid JSON");
}

TEST(TokenizerErrors, MissingParts) {
  expect_load_error(std::string("{") + kPre + "}", "missing \"model\"");
  expect_load_error(minimal(R"({"type": "BPE", "merges": []})"), "missing \"vocab\"");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0}})"), "missing \"merges\"");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {}, "merges": []})"), "model.vocab is empty");
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})", "missing \"pre_tokenizer\"");
}

TEST(TokenizerErrors, WrongTypes) {
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": "0"}, "merges": []})"),
                    "model.vocab[\"a\"] must be an integer id");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": -1}, "merges": []})"), "non-negative");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 1.5}, "merges": []})"), "got a float");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": ["a"], "merges": []})"), "model.vocab must be an object");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0}, "merges": [7]})"), "model.merges[0]");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]})"),
                    "two tokens separated by one space");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]})"), "model.merges[0]");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0}, "merges": {}})"), "model.merges must be an array");
  expect_load_error(minimal(R"({"type": "WordPiece", "vocab": {"a": 0}, "merges": []})"), "only byte-level \"BPE\"");
  expect_load_error(minimal(R"({"type": "BPE", "byte_fallback": "yes", "vocab": {"a": 0}, "merges": []})"),
                    "model.byte_fallback must be a boolean");
  expect_load_error(replace_once(tiny_json(), "\"id\": 268", "\"id\": \"x\""), "added_tokens[0].id");
  expect_load_error(replace_once(tiny_json(), "\"special\": true", "\"special\": 1"),
                    "added_tokens[0].special must be a boolean");
}

TEST(TokenizerErrors, MergesNamingUnknownTokens) {
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]})"),
                    "names token \"c\" that is not in model.vocab");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]})"),
                    "names token \"ab\"");
}

TEST(TokenizerErrors, DuplicatesAndIds) {
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []})"), "gives id 0 to both");
  expect_load_error(minimal(R"({"type": "BPE", "vocab": {"a": 2000000000}, "merges": []})"), "implausibly large");
}

TEST(TokenizerErrors, UnsupportedPipeline) {
  expect_load_error(replace_once(tiny_json(), "\"normalizer\": null", "\"normalizer\": {\"type\": \"NFC\"}"),
                    "normalizer");
  expect_load_error(replace_once(tiny_json(), "\"behavior\": \"Isolated\"", "\"behavior\": \"Removed\""),
                    "behavior must be \"Isolated\"");
  expect_load_error(replace_once(tiny_json(), "\"use_regex\": false", "\"use_regex\": true"), "use_regex=true");
  expect_load_error(replace_once(tiny_json(), "\"Regex\": \"", "\"Regex\": \"("), "does not compile");
  expect_load_error(minimal(R"({"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []})"), "dropout");
}

TEST(TokenizerErrors, BadConfig) {
  test::TempDir dir;
  dir.write("tokenizer.json", tiny_json());
  const std::string cfg = dir.write("tokenizer_config.json", "{\"bos_token\": \"<|nope|>\"}");
  try {
    Tokenizer::load(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(cfg), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("<|nope|>"), std::string::npos) << e.message();
  }
  dir.write("tokenizer_config.json", "{\"bos_token\": 3}");
  EXPECT_THROW(Tokenizer::load(dir.path()), Error);
  dir.write("tokenizer_config.json", "{oops");
  EXPECT_THROW(Tokenizer::load(dir.path()), Error);
}

}  // namespace
}  // namespace sftgo
