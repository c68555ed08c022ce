// train.precision as a policy, chosen once at set-up: the dtype the weights are built in, the region
// the model's forward runs in, the dtypes in which the fused loss sees the hidden states and the LM
// head, and the Updater that turns the trained parameters' gradients into an update. The trainer asks
// only this interface, so a new mode (fp16 with a loss scale, fp8 matmuls) is a new policy, plus an
// Updater where it holds weights or gradients differently, not a branch in the step.
// The built-in policies are listed in src/train/precision.cpp, one line each; tests and plugins add
// theirs with register_precision_policy (tests/train/test_trainer.cpp adds a loss-scaling one).
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sftgo/dist/dist.h"
#include "sftgo/model/autocast.h"
#include "sftgo/optim/optim.h"
#include "sftgo/train/updater.h"

namespace sftgo::train {

// What a policy's make_updater gets: the trained parameters (LoRA: the fp32 adapters; else every
// parameter, in the weights' dtype), all on comm->device().
struct UpdaterSetup {
  std::shared_ptr<dist::Comm> comm;
  optim::NamedParameters params;
  UpdaterOptions options;
  int zero = 0;  // ZeRO stage (config zero_stage): 0 to 3
};

class PrecisionPolicy {
 public:
  virtual ~PrecisionPolicy();
  virtual std::string name() const = 0;  // the train.precision value
  // A few words for the start-up log ("bf16 autocast"); "" says nothing.
  virtual std::string summary() const { return ""; }

  // The dtype the model's parameters are created in, given model.dtype. Throws kConfig (naming
  // model.dtype) on a combination the mode refuses.
  virtual c10::ScalarType weight_dtype(c10::ScalarType configured) const { return configured; }
  // Opened around each model forward and closed before the loss (null: no region). Backward runs
  // outside it, as in PyTorch; activation checkpointing re-enters it for its recomputation.
  virtual std::unique_ptr<model::AutocastGuard> forward_region(c10::DeviceType device) const {
    (void)device;
    return nullptr;
  }
  // The fused loss's two inputs as this mode computes the loss: hidden [T,H] (the trained positions'
  // final hidden states) and head [V,H] (model->head_weight()). Every gradient reaches the parameters
  // through these two, so a loss-scaling mode scales their gradients here and unscales in its Updater.
  virtual at::Tensor loss_hidden(const at::Tensor& hidden) const { return hidden; }
  virtual at::Tensor loss_head(const at::Tensor& head) const { return head; }
  // The Updater of the trained parameters. Default: ZeRO-1 with dist.zero1, else AdamW on the
  // parameters themselves (UpdaterKind::kPlain).
  virtual std::unique_ptr<Updater> make_updater(const UpdaterSetup& setup) const;
};

using PrecisionFactory = std::function<std::unique_ptr<PrecisionPolicy>()>;

// Throws kInternal when the name is taken or empty.
void register_precision_policy(const std::string& name, PrecisionFactory factory);
std::vector<std::string> precision_policy_names();  // sorted
// Throws kConfig on an unknown name, naming the registered policies and the closest one.
std::unique_ptr<PrecisionPolicy> make_precision_policy(const std::string& name);

}  // namespace sftgo::train
