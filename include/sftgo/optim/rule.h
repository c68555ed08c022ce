// The update rule: the one element-wise formula that turns a gradient into a weight update (AdamW
// today), applied by every Updater: on a whole parameter in slices (plain, fp32 masters) or on a rank's
// ZeRO-1 flat shard. What differs between optimizers (AdamW, sign-SGD, 8-bit AdamW, Muon) is a rule
// and a config value (optim.name); the updaters, the trainer's step and the checkpoints do not change.
//
// The rules are listed once in src/optim/registry.cpp; tests and plugins add more with
// register_update_rule (tests/train/test_updater.cpp trains with a toy rule defined there).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/config/config.h"

namespace sftgo::optim {

// The optim.* values a rule is built from (OptimConfig in config.h is the one home of the defaults).
struct RuleOptions {
  std::string name = OptimConfig{}.name;  // registry name (optim.name)
  double lr = OptimConfig{}.lr;           // the peak; each step passes its scheduled rate to apply()
  double beta1 = OptimConfig{}.beta1;
  double beta2 = OptimConfig{}.beta2;
  double eps = OptimConfig{}.eps;
  double weight_decay = OptimConfig{}.weight_decay;  // for the decaying parameters (see decays())
};
RuleOptions rule_options(const OptimConfig& config);

class UpdateRule {
 public:
  virtual ~UpdateRule();
  virtual std::string name() const = 0;
  // The state tensors the rule keeps, each shaped like the parameter (or like the ZeRO-1 shard) in its
  // dtype, zero at the first step. These are the names checkpoints store them under (optimizer.pt's
  // per-parameter archives, the ZeRO-1 shard files), so they must not change for a saved rule.
  virtual std::vector<std::string> state_names() const = 0;
  // True for a rule that needs a whole parameter in its shape (Muon orthogonalises each matrix); such a
  // rule cannot run on a ZeRO-1 flat shard, which cuts matrices, and set-up refuses the combination.
  // Element-wise rules (false) get any contiguous run of elements, in slices of kRuleSliceElements.
  virtual bool needs_whole_matrices() const { return false; }

  // Decoupled weight decay, applied to a decaying parameter (or its part of a shard) before apply():
  // param [N] *= 1 - lr * weight_decay, as torch.optim.AdamW does. A rule may replace it.
  virtual void decay(const at::Tensor& param, double lr, double weight_decay) const;
  // One update, in place. param [N] (or the parameter's shape when needs_whole_matrices) fp32 or the
  // weights' dtype; grad: the same shape, already clipped; state: state_names().size() tensors of the
  // same shape; lr: this step's scheduled rate; step: this parameter's update count, 1 at the first.
  virtual void apply(const at::Tensor& param, const at::Tensor& grad, at::TensorList state, double lr,
                     int64_t step) const = 0;

  // What optimizer.pt records per parameter group as the group's "options" archive. The default is
  // {lr, weight_decay}; AdamW writes LibTorch's AdamWOptions fields, so its files stay LibTorch's.
  virtual std::vector<std::pair<std::string, c10::IValue>> saved_options(double lr, double weight_decay) const;
};

// Element-wise rules see a large parameter in slices of this many elements (16 MB of fp32), so their
// temporaries stay a few MB instead of full copies of the largest parameter (a 128k x 4096 embedding).
inline constexpr int64_t kRuleSliceElements = int64_t{1} << 22;

// ---- Registry ------------------------------------------------------------------------------------
using UpdateRuleFactory = std::function<std::unique_ptr<UpdateRule>(const RuleOptions& options)>;

// Adds a rule under `name` (tests, plugins); the built-ins are listed in src/optim/registry.cpp.
// Throws kInternal when the name is taken.
void register_update_rule(const std::string& name, UpdateRuleFactory factory);
std::vector<std::string> update_rule_names();  // sorted
// Throws Error(kConfig) naming optim.name, the registered rules and the closest one.
std::unique_ptr<UpdateRule> make_update_rule(const RuleOptions& options);
// Throws Error(kConfig) when optim.name is not registered, or names a whole-matrix rule while
// `zero1` (dist.zero1) would hand it flat shards. `sftgo-train config` and set-up both check this.
void check_update_rule(const OptimConfig& config, bool zero1);
// Throws Error(kConfig) when `rule` needs whole matrices (ZeRO-1 set-up calls it).
void check_shardable(const UpdateRule& rule);

}  // namespace sftgo::optim
