// The update rules: the one list of built-ins, runtime additions, and the set-up checks.
#include <algorithm>
#include <map>
#include <mutex>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/optim/rule.h"

namespace sftgo::optim {

// The built-in rules, one factory each (src/optim/<rule>.cpp).
std::unique_ptr<UpdateRule> make_adamw_rule(const RuleOptions& options);

namespace {

struct RuleRegistry {
  std::mutex mu;
  std::map<std::string, UpdateRuleFactory> factories;
};

RuleRegistry& rule_registry() {
  // Filled on first use from this explicit list, so no static-initialisation order or linker
  // dead-stripping of self-registering objects can lose a built-in.
  static RuleRegistry* r = [] {
    auto* reg = new RuleRegistry;
    reg->factories.emplace("adamw", &make_adamw_rule);
    return reg;
  }();
  return *r;
}

UpdateRuleFactory find_rule(const std::string& name) {
  auto& r = rule_registry();
  std::lock_guard lock(r.mu);
  auto it = r.factories.find(name);
  return it == r.factories.end() ? UpdateRuleFactory{} : it->second;
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
  auto& r = rule_registry();
  std::lock_guard lock(r.mu);
  SFTGO_CHECK(!name.empty() && factory, ErrorKind::kInternal, "an update rule needs a name and a factory");
  SFTGO_CHECK(r.factories.emplace(name, std::move(factory)).second, ErrorKind::kInternal, "update rule '", name,
              "' is already registered");
}

std::vector<std::string> update_rule_names() {
  auto& r = rule_registry();
  std::lock_guard lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

std::unique_ptr<UpdateRule> make_update_rule(const RuleOptions& options) {
  const UpdateRuleFactory factory = find_rule(options.name);
  if (!factory) {
    const auto names = update_rule_names();
    const auto close = closest_match(options.name, names);
    SFTGO_FAIL_HINT(ErrorKind::kConfig,
                    close.empty() ? "set optim.name to one of the registered rules" : "did you mean '" + close + "'?",
                    "optim.name: unknown update rule '", options.name, "'; registered: ", join(names, ", "));
  }
  auto rule = factory(options);
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
