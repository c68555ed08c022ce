// Tensor front end of select_rho1; the ranking runs on the CPU (B*S is small next to the forward pass).
#include "sftgo/grouping/rho1_torch.h"

#include <torch/torch.h>

#include "sftgo/core/error.h"

namespace sftgo::grouping {

torch::Tensor select_rho1(const torch::Tensor& current_loss, const torch::Tensor& ref_loss,
                          const torch::Tensor& trained, double k_percent, Selection selection) {
  SFTGO_CHECK(current_loss.dim() == 2, ErrorKind::kInternal, "select_rho1: current_loss must be [B, S], got ",
              current_loss.sizes());
  SFTGO_CHECK(ref_loss.sizes() == current_loss.sizes() && trained.sizes() == current_loss.sizes(),
              ErrorKind::kInternal, "select_rho1: shapes differ: current ", current_loss.sizes(), ", reference ",
              ref_loss.sizes(), ", mask ", trained.sizes());
  const int64_t b = current_loss.size(0), s = current_loss.size(1);
  auto cur = current_loss.detach().to(torch::kCPU, torch::kFloat32).contiguous();  // [B, S]
  auto ref = ref_loss.detach().to(torch::kCPU, torch::kFloat32).contiguous();      // [B, S]
  auto msk = trained.detach().to(torch::kCPU).ne(0).to(torch::kUInt8).contiguous();  // [B, S]
  const auto n = static_cast<size_t>(b * s);
  auto sel = select_rho1(std::span<const float>(cur.data_ptr<float>(), n), std::span<const float>(ref.data_ptr<float>(), n),
                         std::span<const uint8_t>(msk.data_ptr<uint8_t>(), n), b, s, k_percent, selection);
  auto out = torch::from_blob(sel.data(), {b, s}, torch::kUInt8).clone();  // [B, S]
  return out.to(current_loss.device());
}

}  // namespace sftgo::grouping
