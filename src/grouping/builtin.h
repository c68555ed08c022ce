// Internal: the built-in LibTorch-free grouping functions. Adding one = a new .cpp defining
// make_grouping_<name>(opts, tok) + one line in SFTGO_GROUPING_BUILTINS (+ the file in CMakeLists).
// Functions that need LibTorch (rho1) register themselves from src/grouping/*_torch.cpp.
#pragma once

#include <memory>

#include "sftgo/grouping/grouping.h"

#define SFTGO_GROUPING_BUILTINS(X) \
  X(none)                          \
  X(random)                        \
  X(frequency)                     \
  X(tfidf)                         \
  X(llmlingua2)

namespace sftgo::grouping::detail {

#define SFTGO_GROUPING_DECLARE(name) \
  std::unique_ptr<GroupingFunction> make_grouping_##name(const GroupingOptions& opts, const Tokenizer* tok);
SFTGO_GROUPING_BUILTINS(SFTGO_GROUPING_DECLARE)
#undef SFTGO_GROUPING_DECLARE

// Canonical text of a float parameter for params() (round-trips exactly).
std::string param_double(double v);

}  // namespace sftgo::grouping::detail
