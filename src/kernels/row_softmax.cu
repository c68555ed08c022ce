// CUDA row kernels of the fused SFT-GO loss: one thread block per logits row.
//  * row_lse_loss_kernel: one read of the row; each thread keeps an online-softmax state over a strided
//    slice of the vocabulary, states merge through warp shuffles and shared memory.
//  * row_ce_grad_kernel: elementwise, turns the row into scale * (softmax - onehot) in place, so the
//    backward GEMMs read the gradient straight from the chunk buffer.
// The maths (state push/merge, lse, CE and its gradient) is in sftgo/kernels/row_softmax.h, shared with
// the CPU path that the tests run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "sftgo/kernels/fused_ce_cuda.h"
#include "sftgo/kernels/row_softmax.h"

namespace sftgo::kernels {
namespace {

constexpr int kThreads = 512;  // 16 warps: enough loads in flight per row for a 128k vocabulary
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

__device__ __forceinline__ SoftmaxState warp_merge(SoftmaxState s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    SoftmaxState other{__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = softmax_state_merge(s, other);
  }
  return s;
}

// Result valid in thread 0.
__device__ __forceinline__ SoftmaxState block_merge(SoftmaxState s) {
  __shared__ SoftmaxState partial[kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  s = warp_merge(s);
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kWarps ? partial[lane] : softmax_state_empty();
    s = warp_merge(s);
  }
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_lse_loss_kernel(const T* __restrict__ logits, int64_t vocab, int64_t ld, const int64_t* __restrict__ labels,
                        float* __restrict__ lse, float* __restrict__ loss) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * ld;
  SoftmaxState s = softmax_state_empty();
  // Four independent loads per iteration keep more memory requests in flight per thread.
  int64_t j = threadIdx.x;
  for (; j + 3 * kThreads < vocab; j += 4 * kThreads) {
    const float x0 = to_float(row[j]);
    const float x1 = to_float(row[j + kThreads]);
    const float x2 = to_float(row[j + 2 * kThreads]);
    const float x3 = to_float(row[j + 3 * kThreads]);
    softmax_state_push(s, x0);
    softmax_state_push(s, x1);
    softmax_state_push(s, x2);
    softmax_state_push(s, x3);
  }
  for (; j < vocab; j += kThreads) softmax_state_push(s, to_float(row[j]));
  s = block_merge(s);
  if (threadIdx.x == 0) {
    const float l = softmax_state_lse(s);
    lse[r] = l;
    loss[r] = cross_entropy_from_lse(l, to_float(row[labels[r]]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_ce_grad_kernel(T* __restrict__ logits, int64_t vocab, int64_t ld, const int64_t* __restrict__ labels,
                       const float* __restrict__ lse, const float* __restrict__ scale) {
  const int64_t r = blockIdx.x;
  T* row = logits + r * ld;
  const float l = lse[r];
  const float sc = scale[r];
  const int64_t label = labels[r];
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
    store(row + j, cross_entropy_grad(to_float(row[j]), l, j == label, sc));
  }
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* row_lse_loss_cuda(const void* logits, LogitType type, int64_t rows, int64_t vocab, int64_t ld,
                              const int64_t* labels, float* lse, float* loss, void* stream) {
  if (rows <= 0) return nullptr;
  if (rows > 0x7fffffff) return "row_lse_loss_cuda: too many rows for one launch";
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows));
  if (type == LogitType::kFloat32) {
    row_lse_loss_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(logits), vocab, ld, labels, lse, loss);
  } else {
    row_lse_loss_kernel<__nv_bfloat16>
        <<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(logits), vocab, ld, labels, lse, loss);
  }
  return launch_status();
}

const char* row_cross_entropy_grad_cuda(void* logits, LogitType type, int64_t rows, int64_t vocab, int64_t ld,
                                        const int64_t* labels, const float* lse, const float* scale,
                                        void* stream) {
  if (rows <= 0) return nullptr;
  if (rows > 0x7fffffff) return "row_cross_entropy_grad_cuda: too many rows for one launch";
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows));
  if (type == LogitType::kFloat32) {
    row_ce_grad_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<float*>(logits), vocab, ld, labels, lse, scale);
  } else {
    row_ce_grad_kernel<__nv_bfloat16>
        <<<grid, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(logits), vocab, ld, labels, lse, scale);
  }
  return launch_status();
}

}  // namespace sftgo::kernels
