// The single declaration of every config key: its type, default (the struct initialiser), range,
// allowed values and one-line doc. Loading, printing, YAML output and docs all walk this list.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "sftgo/config/config.h"

namespace sftgo::config_detail {

using FieldPtr = std::variant<bool*, int64_t*, double*, std::string*>;

struct Field {
  std::string key;  // "section.name"
  FieldPtr ptr;
  std::string doc;
  std::optional<double> min;  // inclusive bounds for numbers
  std::optional<double> max;
  bool min_exclusive = false;
  std::vector<std::string> choices;  // for strings; empty = free text
  std::string yaml_name;             // name in YAML when it differs from the struct field
  std::optional<double> or_value_;   // one value accepted outside [min, max], e.g. -1 = "unset"
  bool list = false;                 // string: also takes a YAML list of names, kept comma-joined

  Field& range(double lo, double hi) {
    min = lo;
    max = hi;
    return *this;
  }
  Field& at_most(double hi) {
    max = hi;
    return *this;
  }
  Field& or_value(double v) {
    or_value_ = v;
    return *this;
  }
  Field& at_least(double lo) {
    min = lo;
    return *this;
  }
  Field& above(double lo) {
    min = lo;
    min_exclusive = true;
    return *this;
  }
  // A list of names: YAML `[a, b]` (or --set key=[a,b]) and the comma-separated "a,b" both load.
  Field& names_list() {
    list = true;
    return *this;
  }
  Field& one_of(std::vector<std::string> values) {
    choices = std::move(values);
    return *this;
  }
};

// Builds the field list bound to one Config instance: the config module's own keys and, after a
// section's own keys, the keys declared for it (options.h), whose values it fills in when missing.
std::vector<Field> fields_of(Config& config, bool with_declared = true);
// Appends the declared keys of `section`, bound to `values` (a missing or mistyped value is set to
// the default first).
void add_declared_fields(std::vector<Field>& fields, const std::string& section, OptionValues& values);

const char* type_name(const FieldPtr& ptr);
// The type as docs/config.md shows it: a list field is "list".
inline const char* type_name(const Field& f) { return f.list ? "list" : type_name(f.ptr); }
std::string value_string(const FieldPtr& ptr);

// ---- checks (check.cpp) ------------------------------------------------------------------------------
// "in [1, 1000000000]", "> 0 and <= 1000000", "-1, or in [1, 1000000000]"; "" when unbounded.
std::string allowed_text(const Field& f, const char* in = "in ");
// kConfig "<where>: <key> = <text> is out of range (expected ...)" when v is outside the field's range.
void check_range(const Field& f, double v, const std::string& where, const std::string& text);
// kConfig naming the allowed values (and the closest) when the field has choices and text is not one.
void check_choice(const Field& f, const std::string& text, const std::string& where);

// ---- unknown keys (suggest.cpp) ----------------------------------------------------------------------
// "did you mean 'optim.lr'?" for an unknown key: another trainer's name, the same name in another
// section, shared words, else the nearest spelling; "" when nothing is close.
std::string suggest_key(const std::string& key, const std::vector<std::string>& keys);
std::vector<std::string> keys_of(const std::vector<Field>& fields);

}  // namespace sftgo::config_detail
