// Device and dtype names (config keys, command-line options) -> LibTorch values, in one place.
// Header-only over LibTorch on purpose: core's library stays LibTorch-free (see docs/architecture.md),
// and the modules that need this (model, grouping's TorchScript side, eval, train, apps) sit on
// different levels, with model and grouping side by side, so no one of them can own it. Include it
// only from translation units built with LibTorch.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include "sftgo/core/error.h"

namespace sftgo {

// "auto" | "cpu" | "cuda" | "cuda:N" -> a device. auto = CUDA device `cuda_index` when CUDA is
// available, else the CPU; "cuda" = CUDA device `cuda_index` (a rank's local GPU). Errors of `kind`
// name `what` (the key or option): an unknown name, a device that is neither CPU nor CUDA, CUDA on a
// machine without it, an index past the visible devices.
inline c10::Device parse_device(const std::string& name, std::string_view what, ErrorKind kind = ErrorKind::kConfig,
                                int cuda_index = 0) {
  const bool cuda = torch::cuda::is_available();
  if (name == "auto") return cuda ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(cuda_index)) : c10::kCPU;
  std::optional<c10::Device> d;
  try {
    d.emplace(name);
  } catch (const c10::Error&) {
  }
  SFTGO_CHECK_HINT(d && (d->is_cpu() || d->is_cuda()), kind, "use auto, cpu, cuda or cuda:N", what, " '", name,
                   "' is not a device name: expected auto, cpu, cuda or cuda:N");
  if (d->is_cpu()) return c10::kCPU;
  SFTGO_CHECK_HINT(cuda, kind, "use cpu or auto on machines without a GPU", what, " is ", name,
                   " but no CUDA device is available");
  const int index = d->has_index() ? d->index() : cuda_index;
  const int visible = static_cast<int>(torch::cuda::device_count());
  SFTGO_CHECK(index < visible, kind, what, " is ", name, ": CUDA device ", index, " does not exist (", visible,
              " visible)");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// "float32" | "bfloat16" (model.dtype, --dtype) -> the scalar type.
inline c10::ScalarType parse_dtype(std::string_view name, std::string_view what, ErrorKind kind = ErrorKind::kConfig) {
  if (name == "float32") return c10::kFloat;
  if (name == "bfloat16") return c10::kBFloat16;
  SFTGO_FAIL_HINT(kind, "use float32 or bfloat16", what, " must be float32 or bfloat16, got '", name, "'");
}

// The name parse_dtype reads (and HF's config.json torch_dtype): "float32", "bfloat16", "float16".
inline const char* dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    default: return "float32";
  }
}

}  // namespace sftgo
