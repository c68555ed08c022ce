// The NCCL process group, compiled in CUDA builds, where CMake put the torch wheel's own nccl.h (its
// version checked against the NCCL torch loads) on the include path and defined SFTGO_HAVE_NCCL
// (cmake/SftgoNccl.cmake); elsewhere make_nccl_backend() reports that NCCL is unavailable.
#ifdef SFTGO_HAVE_NCCL
#if !__has_include(<nccl.h>) || !__has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#error "SFTGO_HAVE_NCCL is set but nccl.h or ProcessGroupNCCL.hpp is not on the include path"
#endif
#define SFTGO_DIST_NCCL 1
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "backend.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/version.h"

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
std::string nccl_world1_smoke(int device_index) {
  SFTGO_CHECK(torch::cuda::is_available(), ErrorKind::kDist, "NCCL smoke test: no CUDA device");
  const c10::Device dev(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto pg = make_nccl_backend(store, 0, 1, std::chrono::milliseconds(60000));
  // The collectives and dtypes Comm issues for the trainer (comm.cpp): in-place all-reduce (fp32
  // gradients and metrics, bf16 gradients), reduce-scatter and all-gather of flat buffers (ZeRO-1),
  // and a barrier on this device. With one rank each is the identity, so results must be exact.
  std::string done;
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    at::Tensor t = at::arange(1000, at::TensorOptions().dtype(at::kFloat).device(dev)).to(dtype);
    const at::Tensor want = t.clone();
    std::vector<at::Tensor> ts{t};
    pg->allreduce(ts, c10d::AllreduceOptions{})->wait();
    SFTGO_CHECK(at::equal(t, want), ErrorKind::kDist, "NCCL all_reduce ", dtype, " at world 1 changed the tensor");
    done += sftgo::format("all_reduce {} ", c10::toString(dtype));
  }
  at::Tensor in = at::randn({4096}, at::TensorOptions().device(dev));
  at::Tensor out = at::empty_like(in);
  pg->_reduce_scatter_base(out, in, c10d::ReduceScatterOptions{})->wait();
  SFTGO_CHECK(at::equal(out, in), ErrorKind::kDist, "NCCL reduce_scatter at world 1 differs from its input");
  at::Tensor gathered = at::empty_like(in);
  pg->_allgather_base(gathered, in, c10d::AllgatherOptions{})->wait();
  SFTGO_CHECK(at::equal(gathered, in), ErrorKind::kDist, "NCCL all_gather at world 1 differs from its input");
  c10d::BarrierOptions b;
  b.device_ids = {static_cast<int64_t>(device_index)};
  pg->barrier(b)->wait();
  return sftgo::format("nccl smoke: {}reduce_scatter all_gather barrier exact on {} (NCCL headers {})", done, dev.str(),
                       sftgo::nccl_version());
}
#else
bool nccl_available() { return false; }

std::string nccl_world1_smoke(int) {
  SFTGO_FAIL(ErrorKind::kDist,
             "NCCL smoke test: this build has no NCCL process group (sftgo-train --version: NCCL none)");
}

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                    std::chrono::milliseconds) {
  return {};
}
#endif

}  // namespace sftgo::dist
