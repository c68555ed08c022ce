// Shared paths and helpers for the tokenizer tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/temp_dir.h"

namespace sftgo::test {

inline std::string tiny_dir() { return std::string(SFTGO_SOURCE_DIR) + "/tests/tokenizer/fixtures/tiny"; }
inline std::string llama3_dir() { return std::string(SFTGO_SHARED_DIR) + "/data/llama3"; }
inline bool have_llama3() { return std::filesystem::exists(llama3_dir() + "/tokenizer.json"); }

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

using ::sftgo::test_util::TempDir;

}  // namespace sftgo::test
