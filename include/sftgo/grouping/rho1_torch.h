// Tensor front end of the Rho-1 selection (rho1.h); the only grouping header that needs LibTorch.
#pragma once

#include <torch/types.h>

#include "sftgo/grouping/rho1.h"

namespace sftgo::grouping {

// current_loss, ref_loss: [B, S] floating (any device); trained: [B, S] bool/integer (nonzero = trained).
// Returns [B, S] uint8 on current_loss's device. Ranks on the CPU in float32.
torch::Tensor select_rho1(const torch::Tensor& current_loss, const torch::Tensor& ref_loss,
                          const torch::Tensor& trained, double k_percent, Selection selection);

}  // namespace sftgo::grouping
