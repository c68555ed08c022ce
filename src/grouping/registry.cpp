// Name -> factory registry; the built-ins come from SFTGO_GROUPING_BUILTINS (builtin.h).
#include <algorithm>
#include <map>
#include <mutex>

#include "sftgo/core/format.h"

#include "builtin.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::grouping {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, GroupingFactory> factories;
};

Registry& registry() {
  // Filled on first use from the explicit list, so no static-initialisation order or linker
  // dead-stripping of self-registering objects can lose a built-in.
  static Registry* r = [] {
    auto* reg = new Registry;
#define SFTGO_GROUPING_REGISTER(name) reg->factories.emplace(#name, &detail::make_grouping_##name);
    SFTGO_GROUPING_BUILTINS(SFTGO_GROUPING_REGISTER)
#undef SFTGO_GROUPING_REGISTER
    return reg;
  }();
  return *r;
}

}  // namespace

namespace detail {
std::string param_double(double v) { return sftgo::format("{}", v); }
}  // namespace detail

void register_grouping_function(const std::string& name, GroupingFactory factory) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  SFTGO_CHECK(!name.empty() && factory, ErrorKind::kInternal, "grouping function needs a name and a factory");
  SFTGO_CHECK(r.factories.emplace(name, std::move(factory)).second, ErrorKind::kInternal, "grouping function '", name,
              "' is already registered");
}

std::vector<std::string> grouping_function_names() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
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
  GroupingFactory factory;
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    auto it = r.factories.find(opts.function);
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) check_grouping_function_name(opts.function);
  SFTGO_CHECK(static_cast<bool>(factory), ErrorKind::kInternal, "grouping function '", opts.function, "' has no factory");
  auto fn = factory(opts, tok);
  SFTGO_CHECK(fn != nullptr, ErrorKind::kInternal, "grouping factory '", opts.function, "' returned null");
  SFTGO_CHECK_HINT(!fn->requirements().tokenizer || tok != nullptr, ErrorKind::kUsage,
                   "pass the Llama tokenizer to make_grouping_function", "grouping function '", opts.function,
                   "' needs the tokenizer");
  return fn;
}

}  // namespace sftgo::grouping
