// Keys declared by other modules (options.h): the process-wide list of groups and their checks.
#include "sftgo/config/options.h"

#include <algorithm>
#include <mutex>

#include "schema.h"
#include "sftgo/core/error.h"

namespace sftgo {
namespace {

struct Declared {
  std::mutex mu;
  std::vector<OptionGroup> groups;  // in declaration order
};

Declared& declared() {
  static Declared d;
  return d;
}

// The section's own keys ("function", "top_k_percent", ...), which no declared key may shadow.
std::vector<std::string> own_keys(const std::string& section) {
  Config c;
  std::vector<std::string> keys;
  for (const auto& f : config_detail::fields_of(c, /*with_declared=*/false))
    if (f.key.rfind(section + ".", 0) == 0) keys.push_back(f.key.substr(section.size() + 1));
  return keys;
}

const char* value_type(const OptionValue& v) {
  static constexpr const char* kNames[] = {"a bool", "an int", "a float", "a string"};
  return kNames[v.index()];
}

}  // namespace

const OptionValue& OptionValues::at(const std::string& key) const {
  const auto it = values_.find(key);
  SFTGO_CHECK(it != values_.end(), ErrorKind::kInternal, "option '", key, "' has no value");
  return it->second;
}

void declare_options(OptionGroup group) {
  SFTGO_CHECK(group.section == "grouping", ErrorKind::kInternal, "options of '", group.owner,
              "' are declared for section '", group.section, "'; only grouping takes declared options");
  const auto own = own_keys(group.section);
  auto& d = declared();
  std::lock_guard lock(d.mu);
  std::erase_if(d.groups, [&](const OptionGroup& g) { return g.section == group.section && g.owner == group.owner; });
  for (const auto& spec : group.options) {
    SFTGO_CHECK(std::find(own.begin(), own.end(), spec.key) == own.end(), ErrorKind::kInternal, group.owner,
                " declares ", group.section, ".", spec.key, ", a key of the config module");
    for (const auto& other : d.groups)
      for (const auto& o : other.options)
        SFTGO_CHECK(other.section != group.section || o.key != spec.key, ErrorKind::kInternal, group.owner,
                    " declares ", group.section, ".", spec.key, ", already declared by ", other.owner);
  }
  d.groups.push_back(std::move(group));
}

std::vector<OptionGroup> declared_options(const std::string& section) {
  auto& d = declared();
  std::lock_guard lock(d.mu);
  std::vector<OptionGroup> out;
  for (const auto& g : d.groups)
    if (g.section == section) out.push_back(g);
  return out;
}

void check_option(const std::string& section, const OptionSpec& spec, const OptionValue& value,
                  const std::string& where) {
  const std::string key = section + "." + spec.key;
  SFTGO_CHECK(value.index() == spec.default_value.index(), ErrorKind::kConfig, where, ": ", key, ": expected ",
              value_type(spec.default_value), " value, got ", value_type(value));
  OptionValue copy = value;
  const config_detail::Field f{key, std::visit([](auto& x) -> config_detail::FieldPtr { return &x; }, copy), spec.doc,
                               spec.min, spec.max, spec.min_exclusive, spec.choices, {}, {}};
  const std::string text = config_detail::value_string(f.ptr);
  if (const auto* i = std::get_if<int64_t>(&value)) config_detail::check_range(f, static_cast<double>(*i), where, text);
  if (const auto* x = std::get_if<double>(&value)) config_detail::check_range(f, *x, where, text);
  if (const auto* s = std::get_if<std::string>(&value)) config_detail::check_choice(f, *s, where);
}

OptionValues with_defaults(const std::string& section, const std::vector<OptionSpec>& specs, OptionValues values,
                           const std::string& who) {
  for (const auto& spec : specs) {
    if (values.has(spec.key))
      check_option(section, spec, values.at(spec.key), who + " options");
    else
      values.set(spec.key, spec.default_value);
  }
  return values;
}

}  // namespace sftgo
