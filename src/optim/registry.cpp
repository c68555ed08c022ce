// The update rules: the one list of built-ins, runtime additions, and the set-up checks.
#include "sftgo/core/error.h"
#include "sftgo/core/registry.h"
#include "sftgo/optim/rule.h"

namespace sftgo::optim {

// The built-in rules, one factory each (src/optim/<rule>.cpp).
std::unique_ptr<UpdateRule> make_adamw_rule(const RuleOptions& options);

namespace {

NamedRegistry<UpdateRuleFactory>& rule_registry() {
  // Filled on first use from this explicit list, so no static-initialisation order or linker
  // dead-stripping of self-registering objects can lose a built-in.
  static auto* r = [] {
    auto* reg = new NamedRegistry<UpdateRuleFactory>({"an update rule needs a name and a factory", "update rule",
                                                      "optim.name: unknown update rule",
                                                      "set optim.name to one of the registered rules"});
    reg->add("adamw", &make_adamw_rule);
    return reg;
  }();
  return *r;
}

}  // namespace

UpdateRule::~UpdateRule() = default;

void UpdateRule::decay(const at::Tensor& param, double lr, double weight_decay) const {
  if (weight_decay != 0) param.mul_(1 - lr * weight_decay);
}

std::vector<std::pair<std::string, c10::IValue>> UpdateRule::saved_options(double lr, double weight_decay) const {
  return {{"lr", lr}, {"weight_decay", weight_decay}};
}

RuleOptions rule_options(const OptimConfig& c) {
  return {c.name, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay};
}

void register_update_rule(const std::string& name, UpdateRuleFactory factory) {
  rule_registry().add(name, std::move(factory));
}

std::vector<std::string> update_rule_names() { return rule_registry().names(); }

std::unique_ptr<UpdateRule> make_update_rule(const RuleOptions& options) {
  auto rule = rule_registry().get(options.name)(options);
  SFTGO_CHECK(rule != nullptr, ErrorKind::kInternal, "update rule factory '", options.name, "' returned null");
  return rule;
}

void check_shardable(const UpdateRule& rule) {
  SFTGO_CHECK_HINT(!rule.needs_whole_matrices(), ErrorKind::kConfig,
                   "set dist.zero1: false, or choose an element-wise optim.name", "optim.name '", rule.name(),
                   "' updates whole matrices, but dist.zero1 gives each rank a flat shard that cuts them");
}

void check_update_rule(const OptimConfig& config, bool zero1) {
  const auto rule = make_update_rule(rule_options(config));
  if (zero1) check_shardable(*rule);
}

}  // namespace sftgo::optim
