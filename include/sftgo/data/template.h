// Chat/prompt templates: a Conversation becomes token ids + labels. Control tokens are inserted BY ID
// and every piece of user text goes through encode_ordinary(), so a message containing the string
// "<|eot_id|>" stays plain text. No LibTorch.
//
// Which tokens are trained (label = id), per assistant turn, in every turn of a multi-turn example:
//   llama3:  the trimmed content tokens and the closing <|eot_id|>. Not trained: <|begin_of_text|>,
//            <|start_header_id|>assistant<|end_header_id|> and the "\n\n" after it, all
//            system/user turns.
//   alpaca:  the response tokens and the EOS after them; the preamble and "### ..." headers are not.
//   plain:   the response tokens and the EOS after them; BOS and prompt text are not.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "sftgo/data/conversation.h"
#include "sftgo/data/example.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::data {

enum class TemplateKind {
  // Llama-3 chat format, identical to the HF chat template in tokenizer_config.json: BOS once at the
  // start, then per message <|start_header_id|>role<|end_header_id|>"\n\n" + trim(content) + <|eot_id|>.
  // No extra EOS (the template has none; <|eot_id|> ends each turn). trim() is Python's str.strip().
  kLlama3,
  // Stanford Alpaca prompt (with / without "### Input:"), BOS first, response followed by EOS.
  // Further turns append "\n\n### Instruction:\n...\n\n### Response:\n"; a system message replaces
  // the preamble sentence.
  kAlpaca,
  // BOS, then per turn: user text + "\n" (not trained), response + EOS (trained). System text + "\n" first.
  kPlain,
};
TemplateKind parse_template_kind(const std::string& name);  // "llama3" | "alpaca" | "plain"
const char* template_kind_name(TemplateKind kind);

// Python str.strip(): removes leading/trailing characters for which str.isspace() is true
// (ASCII whitespace, U+001C..U+001F, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028/9, U+202F,
// U+205F, U+3000). Jinja's `trim` filter is exactly this.
std::string py_strip(const std::string& s);

// Renders one conversation. `system_prompt`, when set, is prepended as a system message to
// conversations that have none. Throws sftgo::Error(kData) naming the source on text the tokenizer
// rejects. The result is untruncated; see truncate_example().
// With `add_generation_prompt` (HF apply_chat_template's flag of the same name) the ids end with
// what precedes the reply the model is to write: llama3 <|start_header_id|>assistant<|end_header_id|>
// "\n\n"; alpaca the pending instruction and "### Response:\n"; plain the pending user text + "\n".
// This is the one renderer for both training and generation, so a prompt tokenizes the same in
// both: the generation-prompt ids of messages[:k] are a prefix of the training ids of a conversation
// whose message k is the assistant's reply.
TokenizedExample apply_template(const Conversation& conv, const Tokenizer& tok, TemplateKind kind,
                                const std::optional<std::string>& system_prompt = std::nullopt,
                                bool add_generation_prompt = false);

// The ids `sftgo-train generate --chat` feeds the model for one user message: apply_template of
// {user: text} with add_generation_prompt.
std::vector<TokenId> render_generation_prompt(const std::string& user_text, const Tokenizer& tok, TemplateKind kind,
                                              const std::optional<std::string>& system_prompt = std::nullopt);

// What to do with an example longer than max_seq_len.
enum class Truncation {
  kDrop,      // drop the whole example
  kTruncate,  // keep the first max_seq_len tokens (cuts the tail of the response / later turns)
};
Truncation parse_truncation(const std::string& name);  // "drop" | "truncate"
const char* truncation_name(Truncation t);

enum class FitResult { kKept, kTruncated, kDroppedTooLong, kDroppedNoTrained };
// Applies the policy in place. An example with no trained token left (e.g. the prompt alone fills
// max_seq_len) is dropped under either policy.
FitResult fit_to_length(TokenizedExample& ex, int64_t max_seq_len, Truncation policy);

}  // namespace sftgo::data
