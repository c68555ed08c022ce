// Helpers shared by the data tests: temp files and the real Llama-3 tokenizer (skipped when absent).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>

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

#define SFTGO_NEED_TOKENIZER(var)                                              \
  const ::sftgo::Tokenizer* var##_ptr = ::sftgo::data::testing::llama3_tokenizer(); \
  if (!var##_ptr) GTEST_SKIP() << "no shared Llama-3 tokenizer at " << SFTGO_SHARED_DIR; \
  const ::sftgo::Tokenizer& var = *var##_ptr

// std::filesystem::remove_all crashes in binaries linked to LibTorch (libtorch.so exports its own,
// broken copy of the symbol), so trees are removed by hand.
inline void remove_tree(const std::filesystem::path& p) {
  std::error_code ec;
  if (std::filesystem::is_directory(std::filesystem::symlink_status(p, ec))) {
    for (const auto& e : std::filesystem::directory_iterator(p, ec)) remove_tree(e.path());
  }
  std::filesystem::remove(p, ec);
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            (std::string("sftgo_data_") + (info ? info->name() : "x") + "_" + std::to_string(::getpid()));
    remove_tree(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  std::string file(const std::string& name, const std::string& content) const {
    std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace sftgo::data::testing
