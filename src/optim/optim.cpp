#include "sftgo/optim/optim.h"

#include <torch/torch.h>

#include <cmath>

#include "sftgo/core/error.h"

namespace sftgo::optim {

LrDecay parse_lr_decay(const std::string& name) {
  if (name == "cosine") return LrDecay::kCosine;
  if (name == "linear") return LrDecay::kLinear;
  if (name == "constant") return LrDecay::kConstant;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown learning-rate schedule '", name, "' (expected cosine, linear or constant)");
}

double lr_at(const LrSchedule& s, int64_t step) {
  SFTGO_CHECK(s.total_steps > 0, ErrorKind::kConfig, "total_steps must be positive, got ", s.total_steps);
  if (step < s.warmup_steps) return s.peak_lr * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(1, s.total_steps - s.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / static_cast<double>(decay_steps));
  double factor = 1.0;
  switch (s.decay) {
    case LrDecay::kConstant: return s.peak_lr;
    case LrDecay::kLinear: factor = 1.0 - progress; break;
    case LrDecay::kCosine: factor = 0.5 * (1.0 + std::cos(M_PI * progress)); break;
  }
  return s.peak_lr * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * factor);
}

int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  if (warmup_steps >= 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
}

bool decays(const std::string& name, const torch::Tensor& param) {
  if (param.dim() < 2) return false;
  return name.find("norm") == std::string::npos && name.find("bias") == std::string::npos;
}

std::vector<torch::Tensor> element_slices(const torch::Tensor& t, bool sliceable) {
  if (!sliceable || t.numel() <= kRuleSliceElements || !t.is_contiguous()) return {t};
  return t.view({-1}).split(kRuleSliceElements);
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> squares;  // float64 sums of squares, one per slice
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    const torch::Tensor g = p.grad().detach();
    for (const auto& s : element_slices(g)) {
      // Squared in place: one float64 slice (32 MB) at a time instead of two. x * x is what
      // square() computes (pow's exponent-2 kernel), so the norm is unchanged bit for bit.
      torch::Tensor d = s.to(torch::kFloat64);
      squares.push_back(d.mul_(d).sum());
    }
  }
  if (squares.empty()) return 0.0;
  // One reduction and one host sync for all parameters.
  const double total = std::sqrt(torch::stack(squares).sum().item<double>());
  if (!std::isfinite(total) || max_norm <= 0.0 || total <= max_norm) return total;
  const double scale = max_norm / (total + 1e-6);
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(scale);
  return total;
}

}  // namespace sftgo::optim
