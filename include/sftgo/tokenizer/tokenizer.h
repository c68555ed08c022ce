// Byte-level BPE tokenizer for the Llama-3 family, read from a Hugging Face tokenizer.json.
// No LibTorch here: ids are plain int32 vectors. Byte-exact with the HF `tokenizers` library.
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
  kOrdinary,  // treat them as plain text (training data must never inject control tokens)
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
  std::vector<TokenId> encode_ordinary(std::string_view text) const {
    return encode(text, SpecialTokens::kOrdinary);
  }
  // Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD, as HF does.
  // Throws on ids outside [0, vocab_size()).
  std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const;
  // The raw bytes one token stands for (no UTF-8 repair), for span alignment.
  std::string token_bytes(TokenId id) const;

  // Size of the id space: the largest id + 1 over vocab and added tokens.
  int64_t vocab_size() const;
  std::optional<TokenId> token_to_id(std::string_view token) const;  // vocab or added token
  std::string id_to_token(TokenId id) const;                            // as spelled in tokenizer.json
  TokenId special_id(std::string_view content) const;  // throws when `content` is not a special token
  bool is_special(TokenId id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // From tokenizer_config.json when present (else the Llama-3 defaults when those tokens exist).
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
