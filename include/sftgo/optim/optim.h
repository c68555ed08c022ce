// AdamW with decay / no-decay parameter groups, the warmup + decay learning-rate schedule, and
// global-norm gradient clipping.
#pragma once

#include <torch/optim/adamw.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/config/config.h"

namespace sftgo::optim {

enum class LrDecay { kCosine, kLinear, kConstant };
LrDecay parse_lr_decay(const std::string& name);  // "cosine" | "linear" | "constant"

struct LrSchedule {
  double peak_lr = 1e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  LrDecay decay = LrDecay::kCosine;
  double min_lr_ratio = 0.0;  // the rate decays to peak_lr * min_lr_ratio at total_steps
};

// Learning rate for optimizer step `step` (0-based: the rate used by the step-th update).
// Identical to Hugging Face's get_{cosine,linear,constant}_schedule_with_warmup (so runs compare
// with HF-trained baselines): warmup rises linearly from 0 at step 0, then decays to
// peak * min_lr_ratio at total_steps.
double lr_at(const LrSchedule& schedule, int64_t step);

// warmup_steps >= 0 wins; otherwise ceil(ratio * total_steps).
int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

// The defaults are the config's (OptimConfig in config.h is the one home of these numbers).
struct AdamWOptions {
  double lr = OptimConfig{}.lr;
  double beta1 = OptimConfig{}.beta1;
  double beta2 = OptimConfig{}.beta2;
  double eps = OptimConfig{}.eps;
  double weight_decay = OptimConfig{}.weight_decay;
};
AdamWOptions adamw_options(const OptimConfig& config);

using NamedParameters = std::vector<std::pair<std::string, torch::Tensor>>;

// Norm weights, biases and other 1-D tensors get no weight decay (standard for Llama fine-tuning).
bool decays(const std::string& name, const torch::Tensor& param);

// LibTorch's AdamW update, step for step and bit for bit, with bounded scratch memory: the
// denominator is built in place and large tensors are updated in slices of kAdamWSliceElements, so a
// step needs a few MB of temporaries instead of two full copies of the largest parameter (a 128k x
// 4096 fp32 embedding: 4.2 GB). State and checkpoints are LibTorch's (AdamWParamState).
class LeanAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};
inline constexpr int64_t kAdamWSliceElements = int64_t{1} << 22;  // 16 MB of fp32 per temporary

// Group 0 decays, group 1 does not; parameters that do not require grad are left out.
// Returns a LeanAdamW.
std::unique_ptr<torch::optim::AdamW> make_adamw(const NamedParameters& params, const AdamWOptions& options);

// Sets the learning rate of every group.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

// Clips the global L2 norm of the gradients to max_norm (0 = no clipping) and returns the norm
// before clipping (accumulated in float64, in slices, so no float64 copy of a whole gradient is
// ever made). A non-finite norm is returned as is and the gradients are left untouched, so
// the caller can skip the step.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace sftgo::optim
