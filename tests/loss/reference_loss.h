// The SFT-GO loss test oracle, for the loss tests, tests/loss/loss_tool and bench/loss (it is not
// part of the library: nothing in training may call it). Built as sftgo_loss_reference
// (tests/loss/reference_loss.cmake).
#pragma once

#include <ATen/core/Tensor.h>

#include "sftgo/loss/group_loss.h"

namespace sftgo::loss {

// Plain LibTorch autograd ops on materialised logits (matmul, log_softmax, gather, masked means,
// max) in compute_dtype (float32, or float64 for a tighter oracle in tests). Same semantics as
// fused_group_loss (weights_hook, known_weights and groups_hook included; `pass` and the chunk
// sizes do not apply). It checks label range and non-finite losses itself but takes the rest of
// fused_group_loss's input validation as given: call it with inputs the library accepts.
//   hidden [T, H], weight [V, H], labels [T] int64, groups [T] bool/int8/uint8 (may be undefined
//   for objective ce or with groups_hook)
at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info,
                                at::ScalarType compute_dtype);
at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options,
                                LossInfo* info = nullptr);  // float32

}  // namespace sftgo::loss
