// Autoregressive generation with a KV cache: greedy, temperature, top-p (nucleus), seeded.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace sftgo::model {

class LlamaModelImpl;

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  double temperature = 0.0;  // <= 0: greedy (argmax), matching transformers' do_sample=False
  double top_p = 1.0;        // nucleus sampling mass, used when temperature > 0
  uint64_t seed = 0;         // sampling is reproducible for a given seed
  std::vector<int64_t> stop_ids;  // generation ends after emitting one of these (it is returned)
  // Called with each new token as soon as it is chosen (streaming output); may be empty.
  std::function<void(int64_t)> on_token;
};

// prompt: token ids (non-empty). Returns the new tokens only. Runs under no-grad on the model's
// device and dtype; the cache holds prompt + max_new_tokens positions.
std::vector<int64_t> generate(LlamaModelImpl& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options = {});

}  // namespace sftgo::model
