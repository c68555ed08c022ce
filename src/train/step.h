// Internal to the trainer: the pieces a training step is made of (see docs/architecture.md, "One
// training step"). Each is small and knows one thing; Trainer::Impl::train_step strings them together.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "sftgo/data/collate.h"
#include "sftgo/dist/dist.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::train {

// One micro-batch moved to the device and reduced to what the loss needs.
struct MicroBatch {
  at::Tensor ids, positions, mask;  // [B,S], [B,S], bool [B,1,S,S] or undefined (padded rows)
  at::Tensor labels, groups;        // [T] int64, [T] uint8 (undefined until a dynamic function picks them)
  grouping::MicroBatchView view;    // trained positions, per-position scores (dynamic grouping)
  int64_t tokens = 0;               // real (non-padding) tokens
  int64_t trained = 0;              // T
  int64_t important = 0;            // group-1 tokens among T (known before any forward)
};

// The micro-batch's group sizes, as the fused loss counts them (count[1]: important among the T trained
// tokens, count[0]: the rest); the loss sums stay 0. Known before any forward.
loss::GroupStats group_counts(const MicroBatch& b);

// Moves a collated batch to `device`, shifting labels and groups to the predicting position (logits at t
// predict token t+1); score_names: the example scores a dynamic grouping function reads.
MicroBatch to_device(const data::Batch& batch, c10::Device device, const std::vector<std::string>& score_names);

// Per-token cross-entropy [T] (fp32) of hidden [T,H] under the LM head weight [V,H] for labels [T], in
// row chunks so no more than [1024 x V] logits exist at once. No autograd.
at::Tensor token_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels);

// How the step's loss coefficients are decided: step_weights.h.

// The step-wide sums every rank needs after its backward passes: one all-reduce of named fields.
struct StepTotals {
  loss::GroupStats seen;              // the step's group statistics
  bool finite = true;                 // every rank's loss was finite
  bool stop = false;                  // some rank was asked to stop (SIGINT/SIGTERM/SIGUSR1)
  int64_t tokens = 0;                 // real tokens forwarded
  double micro_loss_sum = 0;          // sum of the micro-batch objectives (microbatch scope)
  void all_reduce(dist::Comm& comm);  // sums (finite: all; stop: any) over ranks
};

// The group statistics summed over ranks, together with "finite everywhere".
loss::GroupStats all_reduce_stats(dist::Comm& comm, const loss::GroupStats& local, bool* finite = nullptr);

}  // namespace sftgo::train
