// Row-wise softmax / cross-entropy maths shared by the CUDA kernel (src/kernels/row_softmax.cu)
// and the CPU fused path (src/loss/fused_loss.cpp), so the CPU tests exercise the same formulas.
// Plain C++17 with no LibTorch or CUDA includes: g++ and nvcc both compile it.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SFTGO_HD __host__ __device__ __forceinline__
#else
#define SFTGO_HD inline
#endif

namespace sftgo::kernels {

// Running state of an online softmax over a set of logits: max m and sum of exp(x - m).
// Partial states over disjoint sets merge exactly (up to rounding), so threads, warps or
// CPU blocks can each own a slice of the vocabulary. Always fp32, whatever the logit dtype.
struct SoftmaxState {
  float max;
  float sum;
};

SFTGO_HD SoftmaxState softmax_state_empty() { return SoftmaxState{-INFINITY, 0.0f}; }

// Adds one logit. The -inf guard keeps an empty state from producing exp(-inf - -inf) = NaN.
SFTGO_HD void softmax_state_push(SoftmaxState& s, float x) {
  if (x > s.max) {
    s.sum = s.sum * expf(s.max - x) + 1.0f;  // rescale the old sum to the new max
    s.max = x;
  } else if (x != -INFINITY || s.max != -INFINITY) {
    s.sum += expf(x - s.max);
  }
}

// Merges two partial states; either may be empty.
SFTGO_HD SoftmaxState softmax_state_merge(SoftmaxState a, SoftmaxState b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  if (a.max >= b.max) return SoftmaxState{a.max, a.sum + b.sum * expf(b.max - a.max)};
  return SoftmaxState{b.max, b.sum + a.sum * expf(a.max - b.max)};
}

// log(sum_j exp(x_j)) of everything pushed; NaN/Inf logits propagate (the loss check catches them).
SFTGO_HD float softmax_state_lse(SoftmaxState s) { return s.max + logf(s.sum); }

// Cross-entropy of one token: lse - x[label].
SFTGO_HD float cross_entropy_from_lse(float lse, float label_logit) { return lse - label_logit; }

// d(scale * CE)/d logit_j = scale * (softmax_j - [j == label]).
SFTGO_HD float cross_entropy_grad(float x, float lse, bool is_label, float scale) {
  return (expf(x - lse) - (is_label ? 1.0f : 0.0f)) * scale;
}

// Softmax state of a contiguous slice [begin, end) of one row (one vocabulary block), in blocks: a block max first, then
// one sum of exp against it, merged into the running state. Two cheap passes over a block that
// sits in L1 avoid the per-element rescale of the pure online form. Used by the CPU path.
template <typename T>
inline SoftmaxState row_softmax_state(const T* row, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  SoftmaxState state = softmax_state_empty();
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t e = b + kBlock < end ? b + kBlock : end;
    float m = -INFINITY;
    for (int64_t j = b; j < e; ++j) {
      const float x = static_cast<float>(row[j]);
      m = (x > m || x != x) ? x : m;  // a NaN sticks in m, so the lse below becomes NaN
    }
    if (m == -INFINITY) continue;  // block of -inf logits contributes nothing
    float s = 0.0f;
    for (int64_t j = b; j < e; ++j) s += expf(static_cast<float>(row[j]) - m);
    if (m != m) return SoftmaxState{m, s};  // NaN: merge would compare NaN maxima; return it as is
    state = softmax_state_merge(state, SoftmaxState{m, s});
  }
  return state;
}

// Writes scale * (softmax - onehot(label)) over one vocabulary block of a row in place (T = float or
// bf16). `row` holds columns [col0, col0 + n) of the full row; label is a full-vocabulary index.
template <typename T>
inline void row_cross_entropy_grad(T* row, int64_t n, int64_t col0, int64_t label, float lse, float scale) {
  for (int64_t j = 0; j < n; ++j) {
    row[j] = static_cast<T>(cross_entropy_grad(static_cast<float>(row[j]), lse, col0 + j == label, scale));
  }
}

}  // namespace sftgo::kernels
