// Name -> spec registry. The built-ins are the explicit list below: nothing registers itself, so no
// static-initialisation order or linker dropping of unreferenced objects can lose one.
#include "builtin.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/registry.h"

namespace sftgo::grouping {
namespace {

std::vector<GroupingFunctionSpec> builtin_functions() {
  return {
      detail::none_function(),  detail::random_function(),     detail::frequency_function(),
      detail::tfidf_function(), detail::llmlingua2_function(), detail::rho1_function(),
  };
}

using Registry = NamedRegistry<GroupingFunctionSpec>;

// The function's options become config keys (config/options.h), in registration order; a spec whose
// options cannot be declared is not added.
void add(Registry& r, GroupingFunctionSpec spec) {
  const std::string name = spec.name;
  r.add(name, std::move(spec), [](const GroupingFunctionSpec& s) { declare_options({"grouping", s.name, s.options}); });
}

Registry& registry() {
  static auto* r = [] {
    auto* reg = new Registry({"grouping function needs a name and a factory", "grouping function",
                              "unknown grouping function", "set grouping.function to one of the registered names"},
                             [](const GroupingFunctionSpec& s) { return static_cast<bool>(s.make); });
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

void register_grouping_function(GroupingFunctionSpec spec) { add(registry(), std::move(spec)); }

void register_grouping_function(const std::string& name, GroupingFactory factory) {
  register_grouping_function(GroupingFunctionSpec{name, {}, std::move(factory)});
}

std::vector<std::string> grouping_function_names() { return registry().names(); }

void check_grouping_function_name(const std::string& name) { registry().check(name); }

std::unique_ptr<GroupingFunction> make_grouping_function(const GroupingOptions& opts, const Tokenizer* tok) {
  const GroupingFunctionSpec spec = registry().get(opts.function);
  GroupingOptions full = opts;
  full.params = with_defaults("grouping", spec.options, opts.params, "grouping function '" + opts.function + "'");
  auto fn = spec.make(full, tok);
  SFTGO_CHECK(fn != nullptr, ErrorKind::kInternal, "grouping factory '", opts.function, "' returned null");
  SFTGO_CHECK_HINT(!fn->requirements().tokenizer || tok != nullptr, ErrorKind::kUsage,
                   "pass the Llama tokenizer to make_grouping_function", "grouping function '", opts.function,
                   "' needs the tokenizer");
  return fn;
}

}  // namespace sftgo::grouping
