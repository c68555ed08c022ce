// GPU facts the trainer reports: the device's name and dense bf16 peak (for MFU), and the CUDA
// caching allocator's current and peak memory. No CUDA headers here, and none needed to link: the
// name comes from the driver (libcuda, opened at run time), the memory from LibTorch's device-generic
// allocator interface, so CPU-only builds link and run the same code (it reports nothing).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace sftgo::dist {

// Dense (no sparsity) bf16 tensor-core peak of one GPU, by the CUDA device name, in FLOP/s:
//   H100 SXM ("NVIDIA H100 80GB HBM3", "H100 SXM") 989e12, H100 NVL 835e12, H100 PCIe 756e12,
//   H200 (and GH200) 989e12, H200 NVL 835e12, A100 (SXM and PCIe) 312e12.
// Any other name: 0 (unknown; the caller then uses a configured value or reports no MFU).
double gpu_peak_bf16_flops(const std::string& device_name);

// The CUDA device name of `index` (as nvidia-smi prints it, e.g. "NVIDIA H100 80GB HBM3"); "" when
// no CUDA driver or no such device.
std::string gpu_name(int index);

// The peak to use for MFU: by name when known, else `configured` (a config value, FLOP/s; 0 = unknown).
// `source` says which ("table: <name>", "config", or "unknown").
struct GpuPeak {
  double flops = 0;
  std::string name;
  std::string source = "unknown";
};
GpuPeak gpu_peak(c10::Device device, double configured);

// CUDA caching allocator statistics of `device` in bytes (all zero on the CPU): what tensors hold
// now, what the allocator has reserved from the driver now, and the peaks of both since the last
// reset_gpu_peak_memory. The reserved peak is what decides an out-of-memory.
struct GpuMemory {
  int64_t allocated = 0;
  int64_t reserved = 0;
  int64_t peak_allocated = 0;
  int64_t peak_reserved = 0;
};
GpuMemory gpu_memory(c10::Device device);
void reset_gpu_peak_memory(c10::Device device);  // start of a step; no-op on the CPU

}  // namespace sftgo::dist
