// Finds added tokens ("<|eot_id|>") in text the way HF's AddedVocabulary does: leftmost-longest,
// non-overlapping matches over all added-token contents, first the non-normalized tokens on the
// raw text, then the normalized ones on what is left (no normalizer is supported, so both passes
// see the same bytes). Supported flags: special (skipped in ordinary mode), single_word, lstrip,
// rstrip, normalized.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer_json.h"

namespace sftgo::tok {

struct TextSegment {
  size_t begin = 0, end = 0;
  int32_t token_id = -1;  // -1: ordinary text for the pre-tokenizer and BPE
};

class AddedTokenMatcher {
 public:
  void build(const std::vector<AddedTokenSpec>& tokens);
  bool empty() const { return raw_.tokens.empty() && normalized_.tokens.empty(); }
  // Splits `text` into ordinary runs and added tokens. skip_special: special tokens stay text
  // (HF's encode_special_tokens=true).
  void split(std::string_view text, bool skip_special, std::vector<TextSegment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;  // index into tokens when a content ends here
  };
  struct Trie {
    std::vector<AddedTokenSpec> tokens;
    std::vector<Node> nodes;
    bool first_byte[256] = {};
    void add(const AddedTokenSpec& t);
    // Leftmost-longest match at or after `from`; returns false when none.
    bool find(std::string_view text, size_t from, size_t& start, size_t& len, int32_t& token) const;
  };
  void split_pass(const Trie& trie, std::string_view text, size_t begin, size_t end, bool skip_special,
                  std::vector<TextSegment>& out) const;

  Trie raw_;         // normalized=false tokens
  Trie normalized_;  // normalized=true tokens
};

}  // namespace sftgo::tok
