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
  Field& one_of(std::vector<std::string> values) {
    choices = std::move(values);
    return *this;
  }
};

// Builds the field list bound to one Config instance.
std::vector<Field> fields_of(Config& config);

const char* type_name(const FieldPtr& ptr);
std::string value_string(const FieldPtr& ptr);

}  // namespace sftgo::config_detail
