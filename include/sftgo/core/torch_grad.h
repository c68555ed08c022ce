// Gradient accumulation in place, shared by the model's embedding and the fused loss's LM head
// (the two [V, H] weights), and the fp32 += bf16 gradient add of the updaters. Header-only over ATen: core's library has no LibTorch, and model and loss
// sit side by side (neither may depend on the other), so the one home both can include is here.
// Include it only from translation units built with LibTorch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>

namespace sftgo {

// weight.grad() [V, H], moved out of the parameter, when a custom backward can add its gradient
// into it in place: defined, laid out like the weight, and referenced by nothing else (a
// gradient-as-bucket view or ZeRO's flat buffer shares its storage and stays put). Undefined
// otherwise; then the gradient gets its own buffer and AccumulateGrad adds it as usual. Handing the
// tensor back as the backward's result lets AccumulateGrad find .grad empty and take it (no copy).
inline at::Tensor take_grad_for_accumulation(const at::Tensor& weight) {
  if (at::GradMode::is_enabled() || !weight.is_leaf() || !weight.requires_grad()) return {};
  at::Tensor& g = weight.mutable_grad();
  if (!g.defined() || g.use_count() != 1 || !g.has_storage() || g.storage().use_count() != 1 || g.requires_grad() ||
      g.layout() != at::kStrided || g.scalar_type() != weight.scalar_type() || g.device() != weight.device() ||
      g.sizes() != weight.sizes() || g.strides() != weight.strides() || !g.is_contiguous()) {
    return {};
  }
  return std::exchange(g, at::Tensor());
}

// Elements per slice of a mixed-dtype add (16 MiB of fp32).
inline constexpr int64_t kAddSliceElems = int64_t{1} << 22;

// master [d0, ...] fp32 += grad [d0, ...] bf16, in slices along dim 0. LibTorch's CPU add casts a
// mixed-dtype input to the common dtype first: one add_ would make an fp32 copy of the whole gradient
// (the tied [V, H] embedding: 0.98 GiB at Llama-3.2-1B's vocabulary), which no memory plan counts.
// Slices bound it to kAddSliceElems; each element is still one fp32 add of the same two values. Used
// by the fp32-master updater and ZeRO-1's fp32 gradient buffer.
inline void add_in_slices(at::Tensor& master, const at::Tensor& grad) {
  if (master.dim() == 0 || grad.is_sparse() || master.numel() <= kAddSliceElems ||
      master.scalar_type() == grad.scalar_type()) {
    master.add_(grad);
    return;
  }
  const int64_t rows = master.size(0);
  const int64_t step = std::max<int64_t>(1, kAddSliceElems / std::max<int64_t>(1, master.numel() / rows));
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    master.narrow(0, r, n).add_(grad.narrow(0, r, n));
  }
}

}  // namespace sftgo
