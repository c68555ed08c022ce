// Gradient accumulation in place, shared by the model's embedding and the fused loss's LM head
// (the two [V, H] weights). Header-only over ATen: core's library has no LibTorch, and model and loss
// sit side by side (neither may depend on the other), so the one home both can include is here.
// Include it only from translation units built with LibTorch.
#pragma once

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

}  // namespace sftgo
