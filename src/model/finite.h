// Finiteness checks of loaded weights. Private to src/model (weights.cpp, lora.cpp). A NaN or Inf
// in a checkpoint or adapter makes every score, eval and generation meaningless without any error,
// so loading refuses it, naming the tensor; the check is one read of each tensor.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>

namespace sftgo::model::detail {

// The largest |value| of `t` (any shape, float dtype) in float64; NaN when any element is NaN, Inf
// when any is Inf. Chunked so that a 128k x 4096 embedding needs no tensor-sized temporary.
inline double max_abs(const torch::Tensor& t) {
  torch::NoGradGuard no_grad;
  const torch::Tensor flat = t.detach().reshape({-1});
  constexpr int64_t kChunk = int64_t{1} << 22;
  double m = 0.0;
  for (int64_t i = 0; i < flat.numel(); i += kChunk) {
    const torch::Tensor part = flat.slice(0, i, std::min(flat.numel(), i + kChunk));
    if (!torch::isfinite(part).all().item<bool>()) return torch::isnan(part).any().item<bool>() ? NAN : INFINITY;
    m = std::max(m, part.abs().max().item<double>());
  }
  return m;
}

}  // namespace sftgo::model::detail
