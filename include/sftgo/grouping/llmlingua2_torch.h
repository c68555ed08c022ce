// The LLMLingua-2 classifier over a TorchScript export (the LibTorch half of llmlingua2.h). Linking
// sftgo_grouping registers it as the llmlingua2 classifier loader; this header is for tests and tools
// that load one directly. No LibTorch types in the interface.
#pragma once

#include <memory>
#include <string>

#include "sftgo/grouping/llmlingua2.h"

namespace sftgo::grouping {

// Loads DIR/model.pt on `device` ("auto" = cuda when available, "cpu", "cuda", "cuda:N") and checks,
// before any scoring, that forward takes (input_ids, attention_mask) tensors and returns logits
// [B, T, 2] float for a probe batch, and that the embedding accepts the largest id we produce.
// Throws sftgo::Error(kConfig) naming the file and what was expected.
std::unique_ptr<KeepClassifier> load_llmlingua2_classifier(const Llmlingua2Meta& meta, const std::string& device,
                                                           int64_t batch_size);

// Forces the registration to be linked in (the static library would otherwise drop it).
void register_llmlingua2_classifier();

}  // namespace sftgo::grouping
