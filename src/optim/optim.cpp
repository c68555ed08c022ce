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
  return std::make_unique<LeanAdamW>(std::move(groups), base);
}

namespace {
// Contiguous 1-D slices of at most kAdamWSliceElements covering `t`, or `t` itself when it is small
// or `sliceable` is false (tensors updated together must be sliced alike).
std::vector<torch::Tensor> slices(const torch::Tensor& t, bool sliceable = true) {
  if (!sliceable || t.numel() <= kAdamWSliceElements || !t.is_contiguous()) return {t};
  return t.view({-1}).split(kAdamWSliceElements);
}
}  // namespace

torch::Tensor LeanAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    auto& options = static_cast<torch::optim::AdamWOptions&>(group.options());
    SFTGO_CHECK(!options.amsgrad(), ErrorKind::kInternal, "LeanAdamW: amsgrad is not supported");
    const double beta1 = std::get<0>(options.betas());
    const double beta2 = std::get<1>(options.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Tensor& grad = p.grad();
      SFTGO_CHECK(!grad.is_sparse(), ErrorKind::kInternal, "LeanAdamW: sparse gradients are not supported");
      if (options.weight_decay() != 0) p.mul_(1 - options.lr() * options.weight_decay());
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(0);
        st->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        st->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state_.emplace(p.unsafeGetTensorImpl(), std::move(st)).first;
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
      st.step(st.step() + 1);
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(st.step()));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(st.step()));
      const double step_size = options.lr() / bias_correction1;
      // The same element-wise operations as LibTorch's AdamW, slice by slice (element-wise
      // results do not depend on the slicing).
      const bool same =
          p.is_contiguous() && grad.is_contiguous() && st.exp_avg().is_contiguous() && st.exp_avg_sq().is_contiguous();
      const auto ps = slices(p, same), gs = slices(grad, same), ms = slices(st.exp_avg(), same),
                 vs = slices(st.exp_avg_sq(), same);
      SFTGO_CHECK(ps.size() == gs.size() && ps.size() == ms.size() && ps.size() == vs.size(), ErrorKind::kInternal,
                  "LeanAdamW: parameter, gradient and state layouts differ");
      for (size_t i = 0; i < ps.size(); ++i) {
        ms[i].mul_(beta1).add_(gs[i], 1 - beta1);
        vs[i].mul_(beta2).addcmul_(gs[i], gs[i], 1 - beta2);
        torch::Tensor denom = vs[i].sqrt();
        denom.div_(std::sqrt(bias_correction2)).add_(options.eps());
        ps[i].addcdiv_(ms[i], denom, -step_size);
      }
    }
  }
  return loss;
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
    for (const auto& s : slices(g)) {
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

AdamWOptions adamw_options(const OptimConfig& c) { return {c.lr, c.beta1, c.beta2, c.eps, c.weight_decay}; }

}  // namespace sftgo::optim
