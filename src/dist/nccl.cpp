// The NCCL process group, compiled only where LibTorch's CUDA headers and nccl.h are on the include
// path (a CUDA-toolkit build); elsewhere make_nccl_backend() reports that NCCL is unavailable.
#if __has_include(<nccl.h>) && __has_include(<ATen/cuda/CUDAContext.h>) && __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#define SFTGO_DIST_NCCL 1
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "backend.h"

namespace sftgo::dist {

#ifdef SFTGO_DIST_NCCL
bool nccl_available() { return true; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  // NCCL's own watchdog aborts the communicator (and the process) when a collective exceeds this.
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
#else
bool nccl_available() { return false; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                    std::chrono::milliseconds) {
  return {};
}
#endif

}  // namespace sftgo::dist
