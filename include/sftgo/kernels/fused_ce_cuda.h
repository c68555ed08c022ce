// Host entry points of the CUDA row kernels (src/kernels/row_softmax.cu). Only the loss module calls
// them, and only in builds with SFTGO_HAVE_CUDA; plain C++ so that g++ translation units can include it.
// All pointers are device pointers; `stream` is a cudaStream_t passed as void*. Each returns nullptr on
// success or a static description of the CUDA error (the caller raises sftgo::Error: the .cu stays free
// of the C++20 core headers).
#pragma once

#include <cstdint>

namespace sftgo::kernels {

enum class LogitType { kFloat32, kBFloat16 };

// logits: [rows, vocab] with row stride `ld` (elements); labels: [rows] int64 in [0, vocab).
// Writes lse[r] = logsumexp(logits[r, :]) and loss[r] = lse[r] - logits[r, labels[r]] (fp32).
const char* row_lse_loss_cuda(const void* logits, LogitType type, int64_t rows, int64_t vocab, int64_t ld,
                              const int64_t* labels, float* lse, float* loss, void* stream);

// In place: logits[r, j] = scale[r] * (exp(logits[r, j] - lse[r]) - [j == labels[r]]).
const char* row_cross_entropy_grad_cuda(void* logits, LogitType type, int64_t rows, int64_t vocab, int64_t ld,
                                        const int64_t* labels, const float* lse, const float* scale,
                                        void* stream);

}  // namespace sftgo::kernels
