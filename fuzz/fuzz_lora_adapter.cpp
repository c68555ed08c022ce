// libFuzzer target for the LoRA adapter loader's input checks (src/model/lora_config.cpp): an
// adapter_config.json and an adapter_model.safetensors, both from the fuzzer. Input layout: 2 bytes
// little-endian N, then N bytes of adapter_config.json, then the safetensors file. Any input must
// either be accepted with a consistent rank (every lora_A [r, in], every lora_B [out, r], r >= 1,
// finite positive scaling) or throw sftgo::Error; crashes, sanitizer reports, other exceptions are bugs.
//   scripts/fuzz_lora_adapter.sh [SECONDS]
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/lora_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t n = std::min<size_t>(size - 2, data[0] | (static_cast<size_t>(data[1]) << 8));
  const std::string_view config(reinterpret_cast<const char*>(data + 2), n);
  const std::span<const std::byte> st(reinterpret_cast<const std::byte*>(data + 2 + n), size - 2 - n);
  try {
    const sftgo::model::LoraOptions o = sftgo::model::parse_lora_config(config, "adapter_config.json");
    if (o.rank < 1 || !(std::isfinite(o.scaling()) && o.scaling() > 0) || o.target_modules.empty()) std::abort();
    const auto h = sftgo::io::parse_safetensors(st, "adapter_model.safetensors");
    std::vector<sftgo::io::TensorView> views;
    for (const auto& t : h.tensors) {
      sftgo::io::TensorView v;
      v.name = t.name;
      v.dtype = t.dtype;
      v.shape = t.shape;
      v.data = st.data() + h.data_start + t.begin;
      v.nbytes = t.nbytes();
      v.file = "adapter_model.safetensors";
      views.push_back(std::move(v));
    }
    sftgo::model::check_adapter_tensors(o, views, "adapter_config.json", "adapter_model.safetensors");
    bool any = false;
    for (const auto& v : views) {
      const bool a = v.name.ends_with(".lora_A.weight"), b = v.name.ends_with(".lora_B.weight");
      if (!a && !b) continue;
      any = true;
      if (v.shape.size() != 2 || v.shape[a ? 0 : 1] != o.rank) std::abort();  // accepted a wrong rank
    }
    if (!any) std::abort();
  } catch (const sftgo::Error&) {
  }
  return 0;
}
