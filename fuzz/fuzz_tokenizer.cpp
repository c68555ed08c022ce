// libFuzzer target for the tokenizer. The first input byte picks the mode:
//   even: the rest is a tokenizer.json; loading must succeed or throw sftgo::Error, and a loaded
//         tokenizer must encode/decode a few strings without crashing;
//   odd:  the rest is text for the real Llama-3 tokenizer ($SFTGO_FUZZ_TOKENIZER, default
//         ../shared/data/llama3); invalid UTF-8 must throw sftgo::Error, valid text must round-trip.
// Build and run: scripts/fuzz_tokenizer.sh
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace {

const sftgo::Tokenizer* real_tokenizer() {
  static std::unique_ptr<sftgo::Tokenizer> tok = [] {
    const char* env = std::getenv("SFTGO_FUZZ_TOKENIZER");
    std::string path = env ? env : SFTGO_FUZZ_DEFAULT_TOKENIZER;
    try {
      return std::make_unique<sftgo::Tokenizer>(sftgo::Tokenizer::load(path));
    } catch (const sftgo::Error& e) {
      std::fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path.c_str(), e.what());
      std::abort();
    }
  }();
  return tok.get();
}

std::string scratch_file() {
  // One file per process (libFuzzer -fork/-jobs run several processes).
  return "/dev/shm/sftgo_fuzz_tokenizer_" + std::to_string(getpid()) + ".json";
}

void fuzz_load(const std::string& json) {
  static const std::string path = scratch_file();
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(json.data(), static_cast<std::streamsize>(json.size()));
  }
  try {
    sftgo::Tokenizer tok = sftgo::Tokenizer::load(path);
    for (const char* s : {"hello world", "<|eot_id|> it's 123", "  \n\t x", "\xc3\xa9\xf0\x9f\x98\x80"}) {
      auto ids = tok.encode(s);
      tok.decode(ids);
      tok.encode(s, sftgo::SpecialTokens::kOrdinary);
    }
    for (int64_t id = 0; id < tok.vocab_size() && id < 64; ++id) {
      try {
        tok.token_bytes(static_cast<sftgo::TokenId>(id));
      } catch (const sftgo::Error&) {  // holes in the id space are allowed
      }
    }
  } catch (const sftgo::Error&) {
  }
}

void fuzz_encode(const std::string& text) {
  const sftgo::Tokenizer* tok = real_tokenizer();
  const bool valid = sftgo::find_invalid_utf8(text) == std::string::npos;
  try {
    for (auto mode : {sftgo::SpecialTokens::kMatch, sftgo::SpecialTokens::kOrdinary}) {
      auto ids = tok->encode(text, mode);
      if (!valid) std::abort();  // invalid UTF-8 must have thrown
      if (tok->decode(ids) != text) {
        std::fprintf(stderr, "round trip failed\n");
        std::abort();
      }
    }
  } catch (const sftgo::Error&) {
    if (valid) std::abort();  // valid text must encode
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1)
    fuzz_encode(rest);
  else
    fuzz_load(rest);
  return 0;
}
