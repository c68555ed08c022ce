// The Updater: how a step's gradients become a weight update, and what of it a checkpoint keeps.
// One implementation per way of holding weights and optimizer state; the trainer calls only this
// interface, so a new way (FSDP, LoRA adapters, another precision) is a new Updater, not a branch in
// the step.
//   plain   the update rule on the model's own parameters (fp32, or bf16 weights and state)
//   masters bf16 working weights, fp32 master weights and rule state (train.precision: bf16)
//   zero1   ZeRO-1: rule state and fp32 masters sharded across ranks (dist.zero: 1)
//   zero2   ZeRO-2: also the fp32 gradients, reduced bucket by bucket during backward (dist.zero: 2)
//   zero3   ZeRO-3: also the working weights, gathered layer by layer around their use (dist.zero: 3)
// All of them apply the same optim::UpdateRule (optim.name, AdamW by default): an optimizer is a rule,
// not an Updater.
// With several ranks the first two compose with the bucketed gradient reducer (dist::GradReducer),
// which sums gradients over ranks while the step's last backward runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/dist/dist.h"
#include "sftgo/model/llama.h"
#include "sftgo/optim/optim.h"

namespace sftgo::train {

enum class UpdaterKind { kPlain, kFp32Masters, kZero1, kZero2, kZero3 };

class Updater {
 public:
  virtual ~Updater();
  virtual UpdaterKind kind() const = 0;
  // The step's last backward is next: gradient communication may overlap it.
  virtual void before_last_backward() {}
  // After the step's backward passes, on every rank, also after an aborted step (collectives stay matched).
  virtual void after_backward() {}
  // This rank aborted its step (a non-finite loss) with n backward passes not run that the other ranks
  // may still run: an updater whose collectives run inside backward (ZeRO-2) issues them for n empty
  // passes, so every rank's collectives stay matched and the step is skipped, not stalled.
  virtual void skip_backward_passes(size_t /*n*/) {}
  // Clips the gradients to max_norm (0 = no clipping) and applies one update of the rule at `lr`.
  // finite: the step's loss was finite on every rank (all-reduced, so the same on all; false skips the
  // step). Returns the gradient norm before clipping; NaN/Inf (always NaN when finite is false) means
  // nothing was updated. Every rank gets the same result.
  virtual double step(double lr, double max_norm, bool finite) = 0;
  // Clears the gradients for the next step (in place where the gradients are communication buffers).
  virtual void zero_grad() = 0;
  // Seconds of this step spent in gradient communication (reducer wait or ZeRO-1 step); -1 = none.
  virtual double comm_seconds() const { return -1; }

  // ZeRO-3: frees the working weights (from now on each layer is gathered around its use) and returns
  // what the model must be given (LlamaModelImpl::set_weight_residency); null for every other updater.
  // Called once, after setup and resume, before the first forward of training.
  virtual std::shared_ptr<model::WeightResidency> shard_weights() { return nullptr; }

  // Checkpointing, called on every rank: adds this updater's state to a save (rank 0 writes `request`;
  // files in request.move_files that every rank wrote into staging_dir move into the checkpoint).
  virtual void add_to_save(checkpoint::SaveRequest& request, const std::string& staging_dir) = 0;
  // Restores what add_to_save saved from a checkpoint directory, onto the parameters' device.
  virtual void resume(const std::string& checkpoint_dir) = 0;
};

struct UpdaterOptions {
  optim::RuleOptions rule;       // optim.name and its hyper-parameters
  double bucket_mb = 25;         // gradient all-reduce buckets (several ranks, plain and masters)
  bool zero1_fp32_grads = true;  // ZeRO-1 with bf16 weights: fp32 gradient accumulation and reduce-scatter
  bool offload_optimizer = false;  // ZeRO-2/3: masters, rule state and gradient shard in host memory
  int local_ranks = 1;             // ranks on this host (their offloaded state shares its memory)
  // ZeRO-3 with a model built without memory (ModelOptions::defer_storage): HF name -> initial values.
  model::WeightSource initial_values;
};

// params: the model's parameters (HF name, tensor), all on comm->device(). Error(kConfig) for an
// unknown rule, or one that needs whole matrices with kZero1.
std::unique_ptr<Updater> make_updater(UpdaterKind kind, std::shared_ptr<dist::Comm> comm,
                                      const optim::NamedParameters& params, const UpdaterOptions& options);

}  // namespace sftgo::train
