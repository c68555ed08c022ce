// Reads a Hugging Face tokenizer.json into plain structs, checking every field the tokenizer uses.
// vocab and merges (most of the 9 MB) are streamed straight into vectors by a SAX handler; the
// rest of the file becomes a small nlohmann DOM.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sftgo::tok {

struct AddedTokenSpec {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;  // HF's default when the field is absent
};

struct TokenizerSpec {
  std::vector<std::pair<std::string, int32_t>> vocab;       // spelled token -> id
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<AddedTokenSpec> added_tokens;
  std::string split_pattern;   // the Split pre-tokenizer's pattern
  bool split_is_regex = true;  // false: {"String": ...}, a literal
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
};

// `text` is the content of `path`; errors name `path` and the offending field.
TokenizerSpec parse_tokenizer_json(const std::string& text, const std::string& path);

struct SpecialTokenConfig {
  std::optional<std::string> bos, eos, pad;
  bool has_bos_key = false, has_eos_key = false, has_pad_key = false;
};
// bos_token / eos_token / pad_token of tokenizer_config.json (string, {"content": ...} or null).
SpecialTokenConfig parse_tokenizer_config(const std::string& text, const std::string& path);

}  // namespace sftgo::tok
