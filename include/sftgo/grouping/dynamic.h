// Dynamic grouping functions: groups chosen at every step from the training model's own per-token
// losses (requirements().current_model_loss), e.g. Rho-1's excess loss over a frozen reference.
// The trainer drives every dynamic function through this interface alone: adding one is a new file
// in src/grouping/ that registers a factory, with no change to the trainer.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/shard.h"

namespace sftgo::grouping {

// Where and how a dynamic function does its one-off preparation of a dataset.
struct PrepareContext {
  c10::Device device{c10::kCPU};        // the rank's device
  c10::ScalarType dtype = c10::kFloat;  // the trained model's parameter dtype
  int64_t vocab_size = 0;               // the trained model's vocabulary (a reference model must match)
  std::string cache_dir;                // "" = no on-disk cache
  std::string what = "training data";   // for log lines
  // Data parallel: with a cache, every rank prepares its share of the examples and the shares are
  // merged through the cache (shard.h: compute_sharded), so an N-rank job prepares N times faster.
  ShardJob shard;
  // LoRA runs: the frozen base model (adapters off) scores token sequences, so it can be the reference
  // without a second model in memory; empty otherwise. Log-probs as model::score_logprobs returns them.
  std::function<std::vector<std::vector<double>>(const std::vector<std::vector<int64_t>>&)> base_model_logprobs;
  std::string base_model_identity;  // cache identity of that base model
};

// One micro-batch as a dynamic function sees it. Position t of a row predicts token t + 1, so the
// [B, S-1] tensors are indexed by predicting position; the flat [T] order is that of `select`.
struct MicroBatchView {
  int64_t rows = 0;                          // B
  int64_t positions = 0;                     // S - 1
  at::Tensor select;                         // [T] int64: flat indices of the trained positions in [B * (S-1)]
  at::Tensor trained;                        // [B, S-1] bool: the position's label is trained
  std::map<std::string, at::Tensor> scores;  // batch_scores() name -> [B, S-1] float32 on the device
};

class DynamicGroupingFunction : public GroupingFunction {
 public:
  // Once per dataset, before training or evaluation, on every rank (e.g. reference-model losses
  // into ex.scores). Default: nothing to prepare.
  virtual void prepare(std::vector<data::TokenizedExample>& examples, const PrepareContext& ctx) {}
  // Names of ex.scores entries that every micro-batch must carry to the device (MicroBatchView::scores).
  virtual std::vector<std::string> batch_scores() const { return {}; }
  // Important tokens of the micro-batch, known before any forward: step-scope loss weights need the
  // step's group sizes before the first backward. select() must choose exactly this many.
  virtual int64_t important_count(const MicroBatchView& batch) const = 0;
  // groups [T] uint8 (1 = important) from the training forward's per-token CE token_loss [T] (fp32,
  // on the batch's device, in `select` order).
  virtual at::Tensor select(const MicroBatchView& batch, const at::Tensor& token_loss) const = 0;
  // true: the trainer takes token_loss from a separate no-grad forward before the step instead of from
  // the training forward itself (one extra forward per micro-batch; kept for A/B comparisons).
  virtual bool separate_forward() const { return false; }
};

// fn's dynamic interface, or nullptr for a static function.
DynamicGroupingFunction* as_dynamic(GroupingFunction& fn);

}  // namespace sftgo::grouping
