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

std::unique_ptr<torch::optim::AdamW> make_adamw(const NamedParameters& params, const AdamWOptions& o) {
  std::vector<torch::Tensor> with_decay, without_decay;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    SFTGO_CHECK(p.is_floating_point(), ErrorKind::kInternal, "parameter ", name, " is not floating point");
    (decays(name, p) ? with_decay : without_decay).push_back(p);
  }
  auto base = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(with_decay, std::make_unique<torch::optim::AdamWOptions>(base));
  auto no_decay = base;
  no_decay.weight_decay(0.0);
  groups.emplace_back(without_decay, std::make_unique<torch::optim::AdamWOptions>(no_decay));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), base);
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(torch::kFloat64).norm());
  if (norms.empty()) return 0.0;
  // One reduction and one host sync for all parameters.
  const double total = torch::stack(norms).norm().item<double>();
  if (!std::isfinite(total) || max_norm <= 0.0 || total <= max_norm) return total;
  const double scale = max_norm / (total + 1e-6);
  torch::NoGradGuard no_grad;
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(scale);
  return total;
}

}  // namespace sftgo::optim
