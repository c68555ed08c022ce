// Name -> spec registry. The built-ins are the explicit list below: nothing registers itself, so no
// static-initialisation order or linker dropping of unreferenced objects can lose one.
#include <algorithm>
#include <map>
#include <mutex>
#include <optional>

#include "builtin.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/strings.h"

namespace sftgo::grouping {
namespace {

std::vector<GroupingFunctionSpec> builtin_functions() {
  return {
      detail::none_function(),  detail::random_function(),     detail::frequency_function(),
      detail::tfidf_function(), detail::llmlingua2_function(), detail::rho1_function(),
  };
}

struct Registry {
  std::mutex mu;
  std::map<std::string, GroupingFunctionSpec> specs;
};

// The function's options become config keys (config/options.h), in registration order.
void add(Registry& r, GroupingFunctionSpec spec) {
  SFTGO_CHECK(!spec.name.empty() && spec.make, ErrorKind::kInternal, "grouping function needs a name and a factory");
  SFTGO_CHECK(!r.specs.count(spec.name), ErrorKind::kInternal, "grouping function '", spec.name,
              "' is already registered");
  declare_options({"grouping", spec.name, spec.options});
  r.specs.emplace(spec.name, std::move(spec));
}

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    for (auto& spec : builtin_functions()) add(*reg, std::move(spec));
    return reg;
  }();
  return *r;
}

// Fills the registry before main: the config module then knows every built-in function's keys in any
// binary that can make a grouping function (this file is linked into every such binary), before the
// first config is loaded.
const bool kBuiltinsDeclared = (registry(), true);

}  // namespace

namespace detail {
std::string param_double(double v) { return sftgo::format("{}", v); }
}  // namespace detail

void register_grouping_function(GroupingFunctionSpec spec) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  add(r, std::move(spec));
}

void register_grouping_function(const std::string& name, GroupingFactory factory) {
  register_grouping_function(GroupingFunctionSpec{name, {}, std::move(factory)});
}

std::vector<std::string> grouping_function_names() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, spec] : r.specs) names.push_back(name);
  return names;
}

void check_grouping_function_name(const std::string& name) {
  const auto names = grouping_function_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) return;
  const auto close = closest_match(name, names);
  SFTGO_FAIL_HINT(ErrorKind::kConfig,
                  close.empty() ? "set grouping.function to one of the registered names" : "did you mean '" + close + "'?",
                  "unknown grouping function '", name, "'; registered: ", join(names, ", "));
}

std::unique_ptr<GroupingFunction> make_grouping_function(const GroupingOptions& opts, const Tokenizer* tok) {
  std::optional<GroupingFunctionSpec> spec;
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    auto it = r.specs.find(opts.function);
    if (it != r.specs.end()) spec = it->second;
  }
  if (!spec) check_grouping_function_name(opts.function);
  SFTGO_CHECK(spec.has_value(), ErrorKind::kInternal, "grouping function '", opts.function, "' has no spec");
  GroupingOptions full = opts;
  full.params = with_defaults("grouping", spec->options, opts.params, "grouping function '" + opts.function + "'");
  auto fn = spec->make(full, tok);
  SFTGO_CHECK(fn != nullptr, ErrorKind::kInternal, "grouping factory '", opts.function, "' returned null");
  SFTGO_CHECK_HINT(!fn->requirements().tokenizer || tok != nullptr, ErrorKind::kUsage,
                   "pass the Llama tokenizer to make_grouping_function", "grouping function '", opts.function,
                   "' needs the tokenizer");
  return fn;
}

}  // namespace sftgo::grouping
