// Range and allowed-value checks of one field, shared by the YAML loader and declared options.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "schema.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::config_detail {
namespace {

// Bounds as people write them: 16777216, not 1.67772e+07.
std::string bound_text(double v) {
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

// "in [1, 1000000000]", "> 0 and <= 1000000", "-1, or in [1, 1000000000]"; "" when unbounded.
std::string allowed_text(const Field& f, const char* in) {
  std::ostringstream os;
  if (f.or_value_) os << bound_text(*f.or_value_) << ", or ";
  if (f.min && f.max && !f.min_exclusive)
    os << in << "[" << bound_text(*f.min) << ", " << bound_text(*f.max) << "]";
  else if (f.min && f.max)
    os << "> " << bound_text(*f.min) << " and <= " << bound_text(*f.max);
  else if (f.min)
    os << (f.min_exclusive ? "> " : ">= ") << bound_text(*f.min);
  else if (f.max)
    os << "<= " << bound_text(*f.max);
  else
    return "";
  return os.str();
}

void check_range(const Field& f, double v, const std::string& where, const std::string& text) {
  if (f.or_value_ && v == *f.or_value_) return;
  bool low_ok = !f.min || (f.min_exclusive ? v > *f.min : v >= *f.min);
  bool high_ok = !f.max || v <= *f.max;
  if (low_ok && high_ok) return;
  SFTGO_FAIL(ErrorKind::kConfig, where, ": ", f.key, " = ", text, " is out of range (expected ", allowed_text(f), ")");
}

void check_choice(const Field& f, const std::string& text, const std::string& where) {
  if (f.choices.empty() || std::find(f.choices.begin(), f.choices.end(), text) != f.choices.end()) return;
  const std::string hint = closest_match(text, f.choices);
  SFTGO_FAIL_HINT(ErrorKind::kConfig, hint.empty() ? "" : "did you mean '" + hint + "'?", where, ": ", f.key, ": '",
                  excerpt(text), "' is not one of ", join(f.choices, ", "));
}

}  // namespace sftgo::config_detail
