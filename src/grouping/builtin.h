// Internal: each built-in grouping function's spec (name, own options, factory), defined in the
// function's own file; src/grouping/registry.cpp lists them. Adding a function = its file defining
// <name>_function() + one line here and one in registry.cpp's list (+ the file in CMakeLists.txt).
#pragma once

#include <string>

#include "sftgo/grouping/grouping.h"

namespace sftgo::grouping::detail {

GroupingFunctionSpec none_function();        // none.cpp
GroupingFunctionSpec random_function();      // random.cpp
GroupingFunctionSpec frequency_function();   // frequency.cpp
GroupingFunctionSpec tfidf_function();       // tfidf.cpp
GroupingFunctionSpec llmlingua2_function();  // llmlingua2_torch.cpp (text side: llmlingua2.cpp)
GroupingFunctionSpec rho1_function();        // rho1_torch.cpp

// Canonical text of a float parameter for params() (round-trips exactly).
std::string param_double(double v);

}  // namespace sftgo::grouping::detail
