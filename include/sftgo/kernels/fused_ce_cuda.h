// Host entry points of the CUDA row kernels (src/kernels/row_softmax.cu). Only the loss module calls
// them, and only in builds with SFTGO_HAVE_CUDA; plain C++ so that g++ translation units can include it.
// All pointers are device pointers; `stream` is a cudaStream_t passed as void*. Each returns nullptr on
// success or a static description of the CUDA error (the caller raises sftgo::Error: the .cu stays free
// of the C++20 core headers).
#pragma once

#include <cstdint>

namespace sftgo::kernels {

enum class LogitType { kFloat32, kBFloat16 };

// One vocabulary block: logits [rows, cols] (row stride ld) holds columns [col0, col0 + cols) of the
// full logits. Merges each row's block into its running softmax state (state_max/state_sum [rows],
// start at -inf/0) and stores label_logit[r] when labels[r] falls in the block. When lse/loss are
// non-null (last block) also writes lse[r] and loss[r] = lse[r] - label_logit[r]. All fp32.
const char* row_softmax_block_cuda(const void* logits, LogitType type, int64_t rows, int64_t cols, int64_t ld,
                                   int64_t col0, const int64_t* labels, float* state_max, float* state_sum,
                                   float* label_logit, float* lse, float* loss, void* stream);

// In place over one vocabulary block: logits[r, j] = scale[r] * (exp(logits[r, j] - lse[r]) - [col0 + j == labels[r]]).
const char* row_cross_entropy_grad_cuda(void* logits, LogitType type, int64_t rows, int64_t cols, int64_t ld,
                                        int64_t col0, const int64_t* labels, const float* lse, const float* scale,
                                        void* stream);

}  // namespace sftgo::kernels
