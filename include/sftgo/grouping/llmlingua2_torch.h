// The LLMLingua-2 classifier over a TorchScript export (the LibTorch half of llmlingua2.h): the
// `llmlingua2` grouping function uses lazy_llmlingua2_classifier; tests and tools may load one directly.
// No LibTorch types in the interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "sftgo/grouping/llmlingua2.h"

namespace sftgo::grouping {

// Loads DIR/model.pt on `device` ("auto" = the current CUDA device when CUDA is available, else cpu;
// "cpu", "cuda" (= the current CUDA device), "cuda:N") and checks, for a non-CPU device, that the
// graph holds no fixed Device constant (exports older than the device-neutral one), then,
// before any scoring, that forward takes (input_ids, attention_mask) tensors and returns logits
// [B, T, 2] float for a probe batch, and that the embedding accepts the largest id we produce.
// Throws sftgo::Error(kConfig) naming the file and what was expected.
std::unique_ptr<KeepClassifier> load_llmlingua2_classifier(const Llmlingua2Meta& meta, const std::string& device,
                                                           int64_t batch_size);

// What the grouping function uses: a lazy classifier that resolves opts.device and checks the file at
// once, loads the module on the first keep_probs (never on a grouping-cache hit) and frees it,
// emptying the CUDA allocator's cache, when the function object is destroyed.
KeepClassifierMaker lazy_llmlingua2_classifier(const Llmlingua2Options& opts);

// Process-wide counters for tests: TorchScript modules loaded so far, and lazy classifiers alive.
int64_t llmlingua2_classifier_loads();
int64_t llmlingua2_lazy_classifiers_alive();

}  // namespace sftgo::grouping
