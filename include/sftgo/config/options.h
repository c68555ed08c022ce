// Config keys that a module declares in its own code (a grouping function's options): the module says
// what each key is (type by its default, doc, range, allowed values); the config module loads, checks,
// prints and documents them with its own keys. The values travel as an OptionValues map to the module,
// which reads them back typed. No YAML here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace sftgo {

using OptionValue = std::variant<bool, int64_t, double, std::string>;

// key (as under its section, e.g. "tfidf_sublinear_tf") -> value.
class OptionValues {
 public:
  // The value of `key` as T; throws sftgo::Error(kInternal) when it is missing or of another type.
  template <typename T>
  const T& get(const std::string& key) const {
    return std::get<T>(at(key));
  }
  const OptionValue& at(const std::string& key) const;
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  void set(const std::string& key, OptionValue v) { values_[key] = std::move(v); }
  OptionValue& slot(const std::string& key) { return values_[key]; }  // inserts a default bool
  const std::map<std::string, OptionValue>& all() const { return values_; }

 private:
  std::map<std::string, OptionValue> values_;
};

// One declared key. The default fixes the type: bool, int (int64_t), float (double) or string.
struct OptionSpec {
  std::string key;  // without the section: "tfidf_sublinear_tf"
  OptionValue default_value;
  std::string doc;
  std::optional<double> min;  // inclusive bounds for numbers
  std::optional<double> max;
  bool min_exclusive = false;
  std::vector<std::string> choices;  // for strings; empty = free text

  OptionSpec(std::string k, OptionValue def, std::string d)
      : key(std::move(k)), default_value(std::move(def)), doc(std::move(d)) {}
  // A string literal default is a string, not a bool (an array reference, so that an integer 0 is
  // never taken for a null `const char*`).
  template <size_t N>
  OptionSpec(std::string k, const char (&def)[N], std::string d)
      : OptionSpec(std::move(k), OptionValue(std::string(def)), std::move(d)) {}
  OptionSpec& range(double lo, double hi) {
    min = lo;
    max = hi;
    return *this;
  }
  OptionSpec& at_least(double lo) {
    min = lo;
    return *this;
  }
  OptionSpec& one_of(std::vector<std::string> values) {
    choices = std::move(values);
    return *this;
  }
};

// The declared keys of one owner (a grouping function) under a section ("grouping").
struct OptionGroup {
  std::string section;  // only "grouping" so far: the values land in Config::grouping.options
  std::string owner;    // "tfidf"; for messages and for re-declaring idempotently
  std::vector<OptionSpec> options;
};

// Adds (or, for the same section and owner, replaces) a group of keys; the config module reads them in
// the order declared, after its own keys of the section. Throws sftgo::Error(kInternal) when a key is
// already a key of the section or of another owner.
void declare_options(OptionGroup group);
// Every declared group of `section`, in declaration order.
std::vector<OptionGroup> declared_options(const std::string& section);

// Checks one value against its spec (type, range, allowed values); throws sftgo::Error(kConfig)
// "<where>: <section>.<key> = <value> is out of range (expected ...)" as the config loader does.
void check_option(const std::string& section, const OptionSpec& spec, const OptionValue& value,
                  const std::string& where);
// `values` with every key of `specs` it lacks set to its default; a present key must have its type
// and pass check_option (where = "<who> options").
OptionValues with_defaults(const std::string& section, const std::vector<OptionSpec>& specs, OptionValues values,
                           const std::string& who);

}  // namespace sftgo
