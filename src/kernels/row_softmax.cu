// CUDA row kernels of the fused SFT-GO loss, one thread block per row of a vocabulary block.
//  * row_softmax_block_kernel: one read of the row slice; each thread keeps an online-softmax state over
//    a strided part of it, states merge through warp shuffles and shared memory, and thread 0 merges the
//    result into the row's running state (and finishes lse/CE on the last block).
//  * row_ce_grad_kernel: elementwise, turns the slice into scale * (softmax - onehot) in place, so the
//    backward GEMMs read the gradient straight from the block buffer.
// The maths (state push/merge, lse, CE and its gradient) is in sftgo/kernels/row_softmax.h, shared with
// the CPU path that the tests run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "sftgo/kernels/fused_ce_cuda.h"
#include "sftgo/kernels/row_softmax.h"

namespace sftgo::kernels {
namespace {

constexpr int kThreads = 256;  // 8 warps; a row slice is ~10k columns, i.e. ~40 elements per thread
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
    row_softmax_block_kernel(const T* __restrict__ logits, int64_t cols, int64_t ld, int64_t col0,
                             const int64_t* __restrict__ labels, float* __restrict__ state_max,
                             float* __restrict__ state_sum, float* __restrict__ label_logit, float* __restrict__ lse,
                             float* __restrict__ loss) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * ld;
  SoftmaxState s = softmax_state_empty();
  // Four independent loads per iteration keep more memory requests in flight per thread.
  int64_t j = threadIdx.x;
  for (; j + 3 * kThreads < cols; j += 4 * kThreads) {
    const float x0 = to_float(row[j]);
    const float x1 = to_float(row[j + kThreads]);
    const float x2 = to_float(row[j + 2 * kThreads]);
    const float x3 = to_float(row[j + 3 * kThreads]);
    softmax_state_push(s, x0);
    softmax_state_push(s, x1);
    softmax_state_push(s, x2);
    softmax_state_push(s, x3);
  }
  for (; j < cols; j += kThreads) softmax_state_push(s, to_float(row[j]));
  s = block_merge(s);
  if (threadIdx.x == 0) {
    const SoftmaxState merged = softmax_state_merge(SoftmaxState{state_max[r], state_sum[r]}, s);
    state_max[r] = merged.max;
    state_sum[r] = merged.sum;
    const int64_t local = labels[r] - col0;
    if (local >= 0 && local < cols) label_logit[r] = to_float(row[local]);
    if (lse != nullptr) {
      const float l = softmax_state_lse(merged);
      lse[r] = l;
      loss[r] = cross_entropy_from_lse(l, label_logit[r]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_ce_grad_kernel(T* __restrict__ logits, int64_t cols, int64_t ld, int64_t col0,
                       const int64_t* __restrict__ labels, const float* __restrict__ lse,
                       const float* __restrict__ scale) {
  const int64_t r = blockIdx.x;
  T* row = logits + r * ld;
  const float l = lse[r];
  const float sc = scale[r];
  const int64_t local_label = labels[r] - col0;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    store(row + j, cross_entropy_grad(to_float(row[j]), l, j == local_label, sc));
  }
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* row_softmax_block_cuda(const void* logits, LogitType type, int64_t rows, int64_t cols, int64_t ld,
                                   int64_t col0, const int64_t* labels, float* state_max, float* state_sum,
                                   float* label_logit, float* lse, float* loss, void* stream) {
  if (rows <= 0) return nullptr;
  if (rows > 0x7fffffff) return "row_softmax_block_cuda: too many rows for one launch";
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows));
  if (type == LogitType::kFloat32) {
    row_softmax_block_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(logits), cols, ld, col0, labels,
                                                              state_max, state_sum, label_logit, lse, loss);
  } else {
    row_softmax_block_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(logits), cols,
                                                                      ld, col0, labels, state_max, state_sum,
                                                                      label_logit, lse, loss);
  }
  return launch_status();
}

const char* row_cross_entropy_grad_cuda(void* logits, LogitType type, int64_t rows, int64_t cols, int64_t ld,
                                        int64_t col0, const int64_t* labels, const float* lse, const float* scale,
                                        void* stream) {
  if (rows <= 0) return nullptr;
  if (rows > 0x7fffffff) return "row_cross_entropy_grad_cuda: too many rows for one launch";
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows));
  if (type == LogitType::kFloat32) {
    row_ce_grad_kernel<float>
        <<<grid, kThreads, 0, s>>>(static_cast<float*>(logits), cols, ld, col0, labels, lse, scale);
  } else {
    row_ce_grad_kernel<__nv_bfloat16>
        <<<grid, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(logits), cols, ld, col0, labels, lse, scale);
  }
  return launch_status();
}

}  // namespace sftgo::kernels
