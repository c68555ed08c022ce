// Helpers shared by the data tests: temp files and the real Llama-3 tokenizer (skipped when absent).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>

#include "common/temp_dir.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::data::testing {

inline std::string shared_tokenizer_dir() { return std::string(SFTGO_SHARED_DIR) + "/data/llama3"; }

// The process-wide tokenizer, loaded once; nullptr when /work/shared is not there.
inline const Tokenizer* llama3_tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    std::unique_ptr<Tokenizer> t;
    if (std::filesystem::exists(shared_tokenizer_dir() + "/tokenizer.json"))
      t = std::make_unique<Tokenizer>(Tokenizer::load(shared_tokenizer_dir()));
    return t;
  }();
  return tok.get();
}

#define SFTGO_NEED_TOKENIZER(var)                                                        \
  const ::sftgo::Tokenizer* var##_ptr = ::sftgo::data::testing::llama3_tokenizer();      \
  if (!var##_ptr) GTEST_SKIP() << "no shared Llama-3 tokenizer at " << SFTGO_SHARED_DIR; \
  const ::sftgo::Tokenizer& var = *var##_ptr

using ::sftgo::test_util::TempDir;

}  // namespace sftgo::data::testing
