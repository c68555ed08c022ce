// libFuzzer target for the safetensors header parser: any input must either parse into views that
// lie inside the input, or throw sftgo::Error. Crashes, sanitizer reports and other exceptions are bugs.
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_safetensors.cpp \
//       src/io/safetensors.cpp src/core/error.cpp -o fuzz_safetensors && ./fuzz_safetensors -max_total_time=300
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = sftgo::io::parse_safetensors({reinterpret_cast<const std::byte*>(data), size}, "fuzz");
    uint64_t covered = 0;
    for (const auto& t : h.tensors) {
      // Invariants the parser promises: in bounds, contiguous, sized by dtype x shape.
      if (h.data_start + t.end > size || t.begin != covered) std::abort();
      if (static_cast<uint64_t>(t.numel()) * sftgo::io::dtype_size(t.dtype) != t.nbytes()) std::abort();
      covered = t.end;
    }
    if (h.data_start + covered != size) std::abort();
  } catch (const sftgo::Error&) {
  }
  return 0;
}
