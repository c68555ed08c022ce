// The optimizer over whole parameters (an UpdateRule with decay / no-decay parameter groups), the
// warmup + decay learning-rate schedule, and global-norm gradient clipping.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/config/config.h"
#include "sftgo/optim/rule.h"

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

using NamedParameters = std::vector<std::pair<std::string, torch::Tensor>>;

// Norm weights, biases and other 1-D tensors get no weight decay (standard for Llama fine-tuning).
bool decays(const std::string& name, const torch::Tensor& param);

// Contiguous 1-D slices of at most kRuleSliceElements covering `t`, or `t` itself when it is small, not
// contiguous, or `sliceable` is false (tensors updated together must be sliced alike).
std::vector<torch::Tensor> element_slices(const torch::Tensor& t, bool sliceable = true);

// A RuleOptimizer's per-parameter state: the parameter's update count and the rule's state tensors.
struct RuleParamState : torch::optim::OptimizerCloneableParamState<RuleParamState> {
  int64_t step = 0;
  std::vector<torch::Tensor> tensors;  // UpdateRule::state_names() order, each shaped like the parameter
};
// A parameter group's rate and decay (group 0 decays, group 1 does not).
struct RuleGroupOptions : torch::optim::OptimizerCloneableOptions<RuleGroupOptions> {
  double lr = 0, weight_decay = 0;
  double get_lr() const override { return lr; }
  void set_lr(const double value) override { lr = value; }
};

// An UpdateRule over whole parameters (the plain and fp32-master updaters): decoupled decay, then the
// rule on each parameter in slices of kRuleSliceElements (bounded scratch memory), or whole for a rule
// that needs whole matrices. A torch::optim::Optimizer, so checkpoints save it as one; optimizer.pt
// keeps LibTorch's layout (state/<key>/{step, <state names>}, param_groups/<i>/{params, options}) plus
// the rule's name, so files written by torch::optim::AdamW (every sftgo before the rules) resume.
class RuleOptimizer : public torch::optim::Optimizer {
 public:
  // Group 0 decays, group 1 does not; parameters that do not require grad are left out.
  RuleOptimizer(const NamedParameters& params, const RuleOptions& options);
  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  // Restores the update counts and state tensors (onto each parameter's device); the rates, decay and
  // the rule's hyper-parameters stay this run's configuration. Error(kFormat) when the archive was
  // written by another rule or its tensors do not fit the parameters.
  void load(torch::serialize::InputArchive& archive) override;
  const UpdateRule& rule() const { return *rule_; }
  // nullptr before the parameter's first update.
  const RuleParamState* state_of(const torch::Tensor& param) const;

 private:
  std::unique_ptr<UpdateRule> rule_;
};

// The key optimizer.pt names its rule under (absent in files written by torch::optim::AdamW: "adamw").
inline constexpr const char* kUpdateRuleKey = "update_rule";

// Sets the learning rate of every group.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

// Clips the global L2 norm of the gradients to max_norm (0 = no clipping) and returns the norm
// before clipping (accumulated in float64, in slices, so no float64 copy of a whole gradient is
// ever made). A non-finite norm is returned as is and the gradients are left untouched, so
// the caller can skip the step.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace sftgo::optim
