// AdamW: the one implementation of its update (plain, fp32-master and ZeRO-1 updaters all apply it).
// The operations and their order are LibTorch's torch::optim::AdamW::step (csrc/api/src/optim/adamw.cpp),
// so the weights are LibTorch's bit for bit (tests/optim) and torch.optim.AdamW's (single-tensor path)
// to fp32 rounding; optimizer.pt keeps LibTorch's AdamW layout.
#include <cmath>

#include "sftgo/core/error.h"
#include "sftgo/optim/rule.h"

namespace sftgo::optim {
namespace {

class AdamWRule final : public UpdateRule {
 public:
  explicit AdamWRule(const RuleOptions& o) : beta1_(o.beta1), beta2_(o.beta2), eps_(o.eps) {}
  std::string name() const override { return "adamw"; }
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }

  void apply(const at::Tensor& param, const at::Tensor& grad, at::TensorList state, double lr,
             int64_t step) const override {
    SFTGO_CHECK(state.size() == 2, ErrorKind::kInternal, "AdamW: expected exp_avg and exp_avg_sq");
    const double bias_correction1 = 1 - std::pow(beta1_, static_cast<double>(step));
    const double bias_correction2 = 1 - std::pow(beta2_, static_cast<double>(step));
    const double step_size = lr / bias_correction1;
    const at::Tensor& exp_avg = state[0];
    const at::Tensor& exp_avg_sq = state[1];
    exp_avg.mul_(beta1_).add_(grad, 1 - beta1_);
    exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
    // LibTorch: (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps), the division done in place.
    at::Tensor denom = exp_avg_sq.sqrt();
    denom.div_(std::sqrt(bias_correction2)).add_(eps_);
    param.addcdiv_(exp_avg, denom, -step_size);
  }

  // LibTorch's AdamWOptions fields, so optimizer.pt stays what torch::optim::AdamW reads and writes.
  std::vector<std::pair<std::string, c10::IValue>> saved_options(double lr, double weight_decay) const override {
    return {{"lr", lr},
            {"betas", c10::ivalue::Tuple::create({beta1_, beta2_})},
            {"eps", eps_},
            {"weight_decay", weight_decay},
            {"amsgrad", false}};
  }

 private:
  double beta1_, beta2_, eps_;
};

}  // namespace

std::unique_ptr<UpdateRule> make_adamw_rule(const RuleOptions& options) { return std::make_unique<AdamWRule>(options); }

}  // namespace sftgo::optim
