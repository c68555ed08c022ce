// GPU name (driver API through dlopen), bf16 peak table, and allocator statistics (see gpu.h).
#include "sftgo/dist/gpu.h"

#include <ATen/DeviceAccelerator.h>
#include <dlfcn.h>
#include <torch/cuda.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/dist/dist.h"

namespace sftgo::dist {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

double gpu_peak_bf16_flops(const std::string& device_name) {
  const std::string n = lower(device_name);
  // Vendor datasheet figures for dense bf16 (the sparsity figures are twice these). Order matters:
  // the NVL and PCIe variants before the plain names they contain.
  if (contains(n, "h200")) return contains(n, "nvl") ? 835e12 : 989e12;
  if (contains(n, "h100")) {
    if (contains(n, "nvl")) return 835e12;
    if (contains(n, "pcie")) return 756e12;
    return 989e12;  // SXM5: "NVIDIA H100 80GB HBM3", "H100 SXM5 ..."
  }
  if (contains(n, "a100")) return 312e12;
  return 0;
}

std::string gpu_name(int index) {
  // The driver API: present wherever a GPU is, needs no CUDA toolkit at build time. Device ordinals
  // follow CUDA_VISIBLE_DEVICES as the runtime's do.
  using InitFn = int (*)(unsigned int);
  using GetFn = int (*)(int*, int);
  using NameFn = int (*)(char*, int, int);
  static void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return "";
  auto init = reinterpret_cast<InitFn>(::dlsym(lib, "cuInit"));
  auto get = reinterpret_cast<GetFn>(::dlsym(lib, "cuDeviceGet"));
  auto name = reinterpret_cast<NameFn>(::dlsym(lib, "cuDeviceGetName"));
  if (init == nullptr || get == nullptr || name == nullptr || init(0) != 0) return "";
  int dev = 0;
  if (get(&dev, index) != 0) return "";
  std::array<char, 256> buf{};
  if (name(buf.data(), static_cast<int>(buf.size()) - 1, dev) != 0) return "";
  return std::string(buf.data());
}

GpuPeak gpu_peak(c10::Device device, double configured) {
  GpuPeak p;
  if (device.is_cuda()) {
    p.name = gpu_name(device.has_index() ? device.index() : 0);
    const double table = gpu_peak_bf16_flops(p.name);
    if (table > 0) {
      p.flops = table;
      p.source = "table: " + p.name;
      return p;
    }
  }
  if (configured > 0) {
    p.flops = configured;
    p.source = "config";
  }
  return p;
}

GpuMemory gpu_memory(c10::Device device) {
  GpuMemory m;
  if (!device.is_cuda() || !torch::cuda::is_available()) return m;
  const auto index = device.has_index() ? device.index() : at::accelerator::getDeviceIndex();
  const auto stats = at::accelerator::getDeviceStats(index);
  constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  m.allocated = stats.allocated_bytes[kAll].current;
  m.peak_allocated = stats.allocated_bytes[kAll].peak;
  m.reserved = stats.reserved_bytes[kAll].current;
  m.peak_reserved = stats.reserved_bytes[kAll].peak;
  return m;
}

void reset_gpu_peak_memory(c10::Device device) {
  if (!device.is_cuda() || !torch::cuda::is_available()) return;
  at::accelerator::resetPeakStats(device.has_index() ? device.index() : at::accelerator::getDeviceIndex());
}

// ---- rank -> device ------------------------------------------------------------------------------

int rank_device_index(const LaunchEnv& env, int device_count, const char* cuda_visible_devices) {
  SFTGO_CHECK_HINT(device_count > 0, ErrorKind::kDist, "check nvidia-smi and CUDA_VISIBLE_DEVICES", "rank ", env.rank,
                   ": no CUDA device is visible");
  int listed = -1;  // ids in CUDA_VISIBLE_DEVICES; -1 = unset
  if (cuda_visible_devices != nullptr) {
    std::string v(cuda_visible_devices);
    listed = v.empty() ? 0 : static_cast<int>(std::count(v.begin(), v.end(), ',')) + 1;
  }
  // The launcher bound this process to one GPU (srun --gpus-per-task=1, a per-rank wrapper): use it.
  if (listed == 1) return 0;
  if (device_count == 1) {
    SFTGO_CHECK_HINT(env.local_size <= 1, ErrorKind::kDist,
                     "start one rank per GPU on each host, or give each rank its own GPU through CUDA_VISIBLE_DEVICES",
                     "rank ", env.rank, ": ", env.local_size,
                     " ranks on this host would share its only visible GPU "
                     "(NCCL needs a GPU per rank)");
    return 0;
  }
  SFTGO_CHECK_HINT(
      env.local_rank<device_count, ErrorKind::kDist,
                     "start at most one rank per GPU on each host (mpirun -npernode / torchrun --nproc-per-node)",
                     "rank ", env.rank, " is local rank ", env.local_rank, " on its host, which has only ",
                     device_count, " visible GPUs", listed> 0
          ? " (CUDA_VISIBLE_DEVICES=" + std::string(cuda_visible_devices) + ")"
          : "");
  return env.local_rank;
}

c10::Device bind_rank_device(const LaunchEnv& env, const std::string& device_name) {
  if (device_name == "cpu") return c10::Device(c10::kCPU);
  const bool cuda = torch::cuda::is_available();
  SFTGO_CHECK(device_name == "auto" || device_name.rfind("cuda", 0) == 0, ErrorKind::kConfig, "model.device '",
              device_name, "': expected auto, cpu, cuda or cuda:N");
  if (device_name != "auto")
    SFTGO_CHECK_HINT(cuda, ErrorKind::kConfig, "use model.device: cpu or auto", "model.device is ", device_name,
                     " but no CUDA device is available");
  if (!cuda) return c10::Device(c10::kCPU);
  int index = 0;
  if (device_name.size() > 5 && device_name[4] == ':') {
    c10::Device d(c10::kCPU);
    try {
      d = c10::Device(device_name);
    } catch (const c10::Error&) {
      SFTGO_FAIL(ErrorKind::kConfig, "model.device '", device_name, "': expected cuda:N");
    }
    index = d.index();
    SFTGO_CHECK(index < static_cast<int>(torch::cuda::device_count()), ErrorKind::kConfig, "model.device ", device_name,
                ": only ", torch::cuda::device_count(), " CUDA devices are visible");
  } else {
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    index = rank_device_index(env, static_cast<int>(torch::cuda::device_count()), visible);
  }
  // Before any allocation, stream, cuBLAS handle or NCCL communicator: they all go to the current device.
  at::accelerator::setDeviceIndex(static_cast<c10::DeviceIndex>(index));
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void synchronize_device(c10::Device device) {
  if (!device.is_cuda()) return;
  at::accelerator::synchronizeDevice(device.has_index() ? device.index() : at::accelerator::getDeviceIndex());
}

}  // namespace sftgo::dist
