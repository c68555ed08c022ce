// Text generation from a checkpoint directory (`sftgo-train generate`): the prompt rendered as in
// training (the Llama-3 chat template, or BOS + text), the model loaded for inference, generation with
// a KV cache (model/generate.h), the new tokens decoded. Here and not in model/ because the prompt
// needs the tokenizer and data's chat template, which the model module does not see.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sftgo/model/generate.h"
#include "sftgo/model/inference.h"

namespace sftgo {
class Tokenizer;
}
namespace sftgo::model {
struct LlamaConfig;
}

namespace sftgo::eval {

struct GenerateRequest {
  model::InferenceLoadOptions load;  // model, adapter, dtype, device
  std::string tokenizer_dir;         // empty: load.model_dir
  std::string prompt;
  // The prompt as a user turn of the Llama-3 chat format (the training template, with the assistant
  // header as generation prompt); otherwise BOS (when the tokenizer has one) + the text.
  bool chat = false;
  // max_new_tokens, temperature, top_p, seed; generate_text adds the stop ids and the allowed ids.
  model::GenerateOptions options;
  // How the error about too many new tokens names max_new_tokens: the command-line option.
  std::string max_new_tokens_option = "--max-new-tokens";
};

// The prompt's ids. chat: data::render_generation_prompt (TemplateKind::kLlama3), so a prompt tokenizes
// exactly as the same user turn did in training; else BOS (if any) + the text without special tokens.
std::vector<int64_t> generation_prompt_ids(const Tokenizer& tok, const std::string& prompt, bool chat);

// `base` completed for a model and its tokenizer: generation also stops at the model's eos ids and the
// tokenizer's (appended to base.stop_ids), and emits only ids the tokenizer can decode (allowed: the
// first min(model, tokenizer) vocabulary ids, holes in the tokenizer's id space excluded), since a
// model vocabulary padded past its tokenizer (the demo model: 1408 rows for 1346 ids) has rows no
// text stands for.
model::GenerateOptions generation_options(const model::GenerateOptions& base, const model::LlamaConfig& config,
                                          const Tokenizer& tok);

// The text of generated ids: special tokens dropped, the rest decoded.
std::string decode_generated(const Tokenizer& tok, const std::vector<int64_t>& ids);

// The whole command: loads the tokenizer, then the model (load_for_inference), renders the prompt
// (its ids logged at debug level), checks that max_new_tokens fits max_position_embeddings
// (sftgo::Error kUsage naming max_new_tokens_option and the most that fits), generates and returns the
// decoded new text (no trailing newline).
std::string generate_text(const GenerateRequest& request);

}  // namespace sftgo::eval
