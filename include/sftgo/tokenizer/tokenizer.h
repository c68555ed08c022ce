// Byte-level BPE tokenizer for the Llama-3 family, read from a Hugging Face tokenizer.json.
// No LibTorch here: ids are plain int32 vectors. Byte-exact with the HF `tokenizers` library.
//
// Supported tokenizer.json: model BPE (merges as "a b" or ["a", "b"], ignore_merges, unk_token),
// no normalizer, pre_tokenizer Sequence[Split(Regex or String, Isolated), ByteLevel(use_regex=false,
// add_prefix_space=false)], decoder ByteLevel; anything else is refused with a clear error.
// Added tokens are matched as HF does: leftmost-longest over all contents, non-normalized ones on
// the raw text first; lstrip/rstrip/single_word are honoured; their ids are assigned the way HF
// assigns them (the vocab id if the content is in the vocab, else the next free id).
// Policy on input: encode() takes valid UTF-8 only; anything else throws sftgo::Error(kTokenizer)
// naming the byte offset of the first bad byte (the data layer decides whether to skip or fail).
// Thread safety: a loaded Tokenizer is immutable; encode/decode may run on many threads at once
// (the BPE word cache is per thread).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sftgo {

using TokenId = int32_t;

// What encode() does with special-token strings ("<|eot_id|>") found inside the text.
enum class SpecialTokens {
  kMatch,     // HF default: added tokens in the text become their ids
  kOrdinary,  // special ones are plain text (HF's encode_special_tokens=true); training data must
              // never inject control tokens. Non-special added tokens still match, as in HF.
};

struct AddedToken {
  TokenId id = -1;
  std::string content;
  bool special = false;
};

class Tokenizer {
 public:
  // `path` is a directory holding tokenizer.json (and optionally tokenizer_config.json), or the
  // tokenizer.json file itself. Throws sftgo::Error naming the file and what was wrong.
  static Tokenizer load(const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text must be valid UTF-8: invalid bytes raise sftgo::Error(kTokenizer) with the byte offset.
  std::vector<TokenId> encode(std::string_view text, SpecialTokens special = SpecialTokens::kMatch) const;
  std::vector<TokenId> encode_ordinary(std::string_view text) const { return encode(text, SpecialTokens::kOrdinary); }
  // Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD, as HF does.
  // Throws on ids outside [0, vocab_size()).
  std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const;
  // The raw bytes one token stands for (no UTF-8 repair), for span alignment.
  std::string token_bytes(TokenId id) const;

  // Size of the id space: the largest id + 1 over vocab and added tokens.
  int64_t vocab_size() const;
  std::optional<TokenId> token_to_id(std::string_view token) const;  // vocab or added token
  std::string id_to_token(TokenId id) const;                         // as spelled in tokenizer.json
  TokenId special_id(std::string_view content) const;                // throws when `content` is not a special token
  bool is_special(TokenId id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // From tokenizer_config.json when present (bos_token/eos_token/pad_token: a string, {"content":
  // ...} or null = none); a key that is absent falls back to the Llama-3 default when that token
  // exists: <|begin_of_text|>, <|end_of_text|>, <|finetune_right_pad_id|>.
  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;
  std::optional<TokenId> pad_id() const;
  const std::string& source_path() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sftgo
