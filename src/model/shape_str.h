// "[2, 3]" for a tensor's or a stored tensor's shape in model error messages. Private to src/model:
// one definition for weights.cpp and lora.cpp (two copies would also clash in a unity build).
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace sftgo::model::detail {

inline std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace sftgo::model::detail
