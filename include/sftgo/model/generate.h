// Autoregressive generation with a KV cache: greedy, temperature, top-p (nucleus), seeded.
#pragma once

#include <cstdint>
#include <string>
#include <functional>
#include <vector>

namespace sftgo::model {

class LlamaModelImpl;

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  double temperature = 0.0;       // <= 0: greedy (argmax), matching transformers' do_sample=False
  double top_p = 1.0;             // nucleus sampling mass, used when temperature > 0
  uint64_t seed = 0;              // sampling is reproducible for a given seed
  std::vector<int64_t> stop_ids;  // generation ends after emitting one of these (it is returned)
  // allowed[i] != 0: the model may emit id i; ids at or past allowed.size() never. Empty = every id
  // of the model. A model whose vocabulary is padded past its tokenizer (rows a tokenizer cannot
  // decode) must not pick them: their logits become -inf before greedy or sampled choice.
  std::vector<uint8_t> allowed;
  // Called with each new token as soon as it is chosen (streaming output); may be empty.
  std::function<void(int64_t)> on_token;
};

// prompt: token ids (non-empty). Returns the new tokens only. Runs under no-grad on the model's
// device and dtype; the cache holds prompt + max_new_tokens positions. Throws sftgo::Error(kUsage)
// for options it cannot honour (temperature not finite or < 0, top_p outside (0, 1], prompt +
// max_new_tokens beyond max_position_embeddings, ids outside the vocabulary) and
// sftgo::Error(kModel) when the model's logits are not finite.
std::vector<int64_t> generate(LlamaModelImpl& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options = {});

// The most new tokens a prompt of `prompt_tokens` leaves room for: max_position_embeddings - prompt.
int64_t max_new_tokens_bound(const LlamaModelImpl& model, int64_t prompt_tokens);

}  // namespace sftgo::model
