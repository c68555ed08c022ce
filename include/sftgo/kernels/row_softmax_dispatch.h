// Tensor-level entry points of the fused loss's row kernels: each picks the CPU loop (the maths of
// sftgo/kernels/row_softmax.h under at::parallel_for) or the CUDA kernel (src/kernels/row_softmax.cu,
// through sftgo/kernels/fused_ce_cuda.h) from the logits' device. Only the loss module calls them.
// row_softmax.h itself stays free of LibTorch, because nvcc compiles it into the .cu.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace sftgo::kernels {

// Running online-softmax state of N rows across vocabulary blocks, fp32 whatever the logit dtype.
struct RowState {
  at::Tensor max, sum, label_logit;  // [N] fp32: running max (start -inf), sum (start 0), the label's logit
};

// One vocabulary block: logits [N, Vb] contiguous hold columns [col0, col0 + Vb); labels [N] int64.
// Merges the block into `st`; on the last block (lse/loss given, [N] fp32) finishes lse and the CE.
void row_softmax_block(const at::Tensor& logits, int64_t col0, const at::Tensor& labels, RowState& st, at::Tensor* lse,
                       at::Tensor* loss);

// In place over one vocabulary block: logits [N, Vb] <- scale[r] * (softmax - onehot(label)); labels [N]
// int64, lse and scale [N] fp32.
void row_ce_grad(at::Tensor& logits, int64_t col0, const at::Tensor& labels, const at::Tensor& lse,
                 const at::Tensor& scale);

// Full rows in one go (the one-pass loss): logits [R, V] contiguous -> lse, loss [R] fp32, then in place
// logits <- scale[r] * (softmax - onehot(label)); labels [R] int64, scale [R] fp32. On the CPU one
// parallel loop reads each row while it is in cache; on CUDA the two block kernels over one full-width block.
void onepass_rows(at::Tensor& logits, const at::Tensor& labels, const at::Tensor& scale, at::Tensor& lse,
                  at::Tensor& loss);

}  // namespace sftgo::kernels
