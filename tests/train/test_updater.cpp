// Updater checks that need no trainer: optimizer state resumed onto the parameters' device, each
// implementation's update equal to LibTorch's AdamW, and a toy update rule defined in this file (the
// optimizer extension point: no updater, trainer or registry entry edited) trained on every updater.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/optim/rule.h"
#include "sftgo/train/updater.h"

namespace sftgo::train {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<dist::Comm> single_process() { return dist::Comm::create(dist::LaunchEnv{}, {}, c10::kCPU); }

optim::NamedParameters params_on(c10::Device device) {
  torch::manual_seed(3);
  return {{"w", torch::randn({4, 3}).to(device).set_requires_grad(true)},
          {"b", torch::randn({3}).to(device).set_requires_grad(true)}};
}

// A backward pass whose gradient is 0.5 everywhere (through autograd, so gradient hooks run).
void fake_backward(const optim::NamedParameters& params) {
  for (const auto& [name, p] : params) (p * 0.5).sum().backward();
}

// An optimizer.pt written on one device (here CPU) must resume onto the device the parameters live on
// now (a GPU rank; here the meta device stands in for it): LibTorch's archive keeps the saved device.
TEST(Updater, ResumedOptimizerStateFollowsTheParametersDevice) {
  const fs::path dir = fs::temp_directory_path() / "sftgo_test_updater_resume";
  fs::remove_all(dir);
  fs::create_directories(dir);
  UpdaterOptions o;
  auto cpu_params = params_on(c10::kCPU);
  auto cpu = make_updater(UpdaterKind::kPlain, single_process(), cpu_params, o);
  fake_backward(cpu_params);
  ASSERT_TRUE(std::isfinite(cpu->step(1e-3, 1.0, true)));
  checkpoint::SaveRequest r;
  cpu->add_to_save(r, "");
  ASSERT_NE(r.optimizer, nullptr);
  {
    torch::serialize::OutputArchive archive;
    r.optimizer->save(archive);
    archive.save_to((dir / "optimizer.pt").string());
  }
  auto meta_params = params_on(c10::Device(c10::kMeta));
  auto meta = make_updater(UpdaterKind::kPlain, single_process(), meta_params, o);
  meta->resume(dir.string());
  checkpoint::SaveRequest back;
  meta->add_to_save(back, "");
  int moved = 0;
  const auto* rules = dynamic_cast<optim::RuleOptimizer*>(back.optimizer);
  ASSERT_NE(rules, nullptr);
  for (const auto& group : back.optimizer->param_groups()) {
    for (const auto& p : group.params()) {
      const optim::RuleParamState* s = rules->state_of(p);
      ASSERT_NE(s, nullptr);
      ASSERT_EQ(s->tensors.size(), 2u);  // exp_avg, exp_avg_sq
      for (const auto& t : s->tensors) EXPECT_TRUE(t.is_meta());
      ++moved;
    }
  }
  EXPECT_EQ(moved, 2);
  fs::remove_all(dir);
}

// plain and fp32-master updates equal torch::optim::AdamW on fp32 parameters (the masters updater on
// fp32 weights has nothing to round, so it must agree bit for bit too).
TEST(Updater, PlainAndMastersMatchLibTorchAdamW) {
  for (UpdaterKind kind : {UpdaterKind::kPlain, UpdaterKind::kFp32Masters}) {
    auto params = params_on(c10::kCPU);
    auto ref = params_on(c10::kCPU);
    UpdaterOptions o;
    o.rule.weight_decay = 0.0;
    auto u = make_updater(kind, single_process(), params, o);
    torch::optim::AdamW adamw(
        {ref[0].second, ref[1].second},
        torch::optim::AdamWOptions(1e-2).betas({o.rule.beta1, o.rule.beta2}).eps(o.rule.eps).weight_decay(0.0));
    for (int step = 0; step < 3; ++step) {
      fake_backward(params);
      fake_backward(ref);
      u->step(1e-2, 0.0, true);
      u->zero_grad();
      adamw.step();
      adamw.zero_grad();
    }
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_TRUE(torch::equal(params[i].second, ref[i].second)) << params[i].first;
  }
}

// bf16 weights: the micro-batches' gradients are summed in fp32 (the masters' gradients, or ZeRO-1's
// fp32 flat buffer), not in bf16. 16 micro-batches of bf16 gradients w_i: the gradient norm the step
// sees must be that of the exact sum (fp64 reference) to fp32 accuracy. ZeRO-1 told to accumulate in
// the weights' dtype (dist.zero1_fp32_grads: false, the old behaviour) is the control: off by ~1e-3.
TEST(Updater, Bf16MicroBatchesAccumulateInFp32) {
  struct Case {
    UpdaterKind kind;
    bool fp32_grads;
  };
  for (const Case c :
       {Case{UpdaterKind::kFp32Masters, true}, Case{UpdaterKind::kZero1, true}, Case{UpdaterKind::kZero1, false}}) {
    SCOPED_TRACE(c.kind == UpdaterKind::kZero1 ? (c.fp32_grads ? "zero1" : "zero1 bf16 grads") : "masters");
    torch::manual_seed(5);
    const int64_t n = 4096, micro = 16;
    optim::NamedParameters params = {{"w", torch::randn({n}).to(at::kBFloat16).set_requires_grad(true)}};
    UpdaterOptions o;
    o.zero1_fp32_grads = c.fp32_grads;
    auto u = make_updater(c.kind, single_process(), params, o);
    const at::Tensor before = params[0].second.detach().clone();
    at::Tensor exact = torch::zeros({n}, at::kDouble);
    for (int64_t i = 0; i < micro; ++i) {
      const at::Tensor w = (torch::rand({n}) + 0.5).to(at::kBFloat16);  // d/dp sum(p * w) = w, exact in bf16
      (params[0].second * w).sum().backward();
      if (c.fp32_grads)
        EXPECT_FALSE(params[0].second.grad().defined()) << "the bf16 gradient is freed once added into the fp32 sum";
      exact += w.to(at::kDouble);
    }
    const double want = exact.norm().item<double>();
    const double error = std::abs(u->step(1e-3, 0.0, true) - want) / want;
    if (c.fp32_grads) {
      // fp32 sums of 16 terms near 1: relative error ~16 * 2^-24 ~ 1e-6 per element, far less on the norm.
      EXPECT_LT(error, 1e-6);
    } else {
      EXPECT_GT(error, 1e-4) << "the bf16 running sum is measurably worse";
    }
    // The update reached the bf16 weights, and the next step starts from zero gradients (norm of ones).
    EXPECT_FALSE(torch::equal(params[0].second, before));
    u->zero_grad();
    (params[0].second * 1.0).sum().backward();
    EXPECT_NEAR(u->step(1e-3, 0.0, true), std::sqrt(static_cast<double>(n)), 1e-9);
  }
}

// A bf16 gradient larger than one slice of the master updater's fp32 += bf16 add (4M elements: it adds
// in row slices so no fp32 copy of the whole gradient is made): every row, the short last slice
// included, reaches the fp32 master gradient. Two micro-batches of weights in [0.5, 1.5) (exact in
// bf16, their fp32 sum exact): the step's norm must match the fp64 norm of the sum to fp32 accuracy,
// while losing the last 7 rows (or adding them twice) would move it by ~0.3%.
TEST(Updater, Fp32MastersAddLargeBf16GradientsWhole) {
  torch::manual_seed(7);
  const int64_t rows = 1030, cols = 4099;  // 4.2M elements: slices of 1023 rows, then 7
  optim::NamedParameters params = {{"w", torch::randn({rows, cols}).to(at::kBFloat16).set_requires_grad(true)}};
  auto u = make_updater(UpdaterKind::kFp32Masters, single_process(), params, UpdaterOptions{});
  at::Tensor exact = torch::zeros({rows, cols}, at::kDouble);
  for (int i = 0; i < 2; ++i) {
    at::Tensor w = (torch::rand({rows, cols}) + 0.5).to(at::kBFloat16);
    w.narrow(0, rows - 7, 7).mul_(8);  // the last slice weighs more: dropping it shows
    (params[0].second * w).sum().backward();
    exact += w.to(at::kDouble);
  }
  const double want = exact.norm().item<double>();
  EXPECT_LT(std::abs(u->step(1e-3, 0.0, true) - want) / want, 1e-6);  // fp32 norm of 4.2M terms
}

TEST(Updater, NonFiniteStepChangesNothing) {
  auto params = params_on(c10::kCPU);
  const at::Tensor before = params[0].second.detach().clone();
  auto u = make_updater(UpdaterKind::kPlain, single_process(), params, UpdaterOptions{});
  fake_backward(params);
  {
    torch::NoGradGuard no_grad;
    params[0].second.mutable_grad()[0][0] = NAN;
  }
  EXPECT_FALSE(std::isfinite(u->step(1e-2, 1.0, true)));
  EXPECT_TRUE(torch::equal(params[0].second, before));
  fake_backward(params);
  EXPECT_TRUE(std::isnan(u->step(1e-2, 1.0, false)));  // another rank's loss was not finite
  EXPECT_TRUE(torch::equal(params[0].second, before));
}

// ---- The optimizer extension point: rules defined here, registered at run time ----------------------

// Sign-SGD with momentum: m = 0.5 m + g, p -= lr * sign(m). Element-wise, one state tensor.
class SignMomentum final : public optim::UpdateRule {
 public:
  std::string name() const override { return "test_sign_momentum"; }
  std::vector<std::string> state_names() const override { return {"momentum"}; }
  void apply(const at::Tensor& param, const at::Tensor& grad, at::TensorList state, double lr,
             int64_t) const override {
    state[0].mul_(0.5).add_(grad);
    param.add_(state[0].sign(), -lr);
  }
};

// Normalised gradient descent per matrix, p -= lr * g / ||g||_F: needs each parameter whole.
class WholeMatrix final : public optim::UpdateRule {
 public:
  std::string name() const override { return "test_whole_matrix"; }
  std::vector<std::string> state_names() const override { return {}; }
  bool needs_whole_matrices() const override { return true; }
  void apply(const at::Tensor& param, const at::Tensor& grad, at::TensorList, double lr, int64_t) const override {
    shapes.push_back(param.sizes().vec());
    param.add_(grad / grad.norm(), -lr);
  }
  static inline std::vector<std::vector<int64_t>> shapes;  // what apply() saw, in order
};

void register_toy_rules() {
  static const bool once = [] {
    optim::register_update_rule("test_sign_momentum", [](const optim::RuleOptions&) {
      return std::make_unique<SignMomentum>();
    });
    optim::register_update_rule("test_whole_matrix", [](const optim::RuleOptions&) {
      return std::make_unique<WholeMatrix>();
    });
    return true;
  }();
  (void)once;
}

// The gradient of step k: a fixed random tensor per parameter (through autograd, so hooks run).
std::vector<at::Tensor> toy_grads(int k, const optim::NamedParameters& params) {
  torch::manual_seed(50 + k);
  std::vector<at::Tensor> g;
  for (const auto& [name, p] : params) {
    g.push_back(torch::randn(p.sizes()));
    (p * g.back()).sum().backward();
  }
  return g;
}

// The toy rule by hand, element by element in double: clip to max_norm as optim::clip_grad_norm does,
// decay the 2-D parameter, m = 0.5 m + g, p -= lr * sign(m).
struct SignMomentumByHand {
  std::vector<std::vector<double>> p, m;
  void step(const std::vector<at::Tensor>& grads, double lr, double wd, double max_norm) {
    double sq = 0;
    for (const auto& g : grads) sq += g.to(at::kDouble).pow(2).sum().item<double>();
    const double norm = std::sqrt(sq), scale = norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
    for (size_t i = 0; i < p.size(); ++i) {
      const at::Tensor g = grads[i].to(at::kDouble).contiguous();
      for (size_t j = 0; j < p[i].size(); ++j) {
        if (i == 0) p[i][j] *= 1 - lr * wd;  // "w" decays, "b" (1-D) does not
        m[i][j] = 0.5 * m[i][j] + g.data_ptr<double>()[j] * scale;
        p[i][j] -= lr * (m[i][j] > 0 ? 1.0 : m[i][j] < 0 ? -1.0 : 0.0);
      }
    }
  }
};

// A rule from this file trains on the plain, fp32-master and ZeRO-1 updaters, and each equals the hand
// computation. Tolerance 1e-5: the updaters work in fp32 (decay factor, clip scale and momentum round
// to fp32 each step; 3 steps of values ~1 keep the error near 1e-7), the hand computation in double.
TEST(UpdateRule, ToyRuleFromATestTrainsOnEveryUpdater) {
  register_toy_rules();
  for (UpdaterKind kind : {UpdaterKind::kPlain, UpdaterKind::kFp32Masters, UpdaterKind::kZero1}) {
    SCOPED_TRACE(static_cast<int>(kind));
    auto params = params_on(c10::kCPU);
    SignMomentumByHand hand;
    for (const auto& [n, p] : params) {
      const at::Tensor d = p.detach().to(at::kDouble).contiguous();
      hand.p.emplace_back(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
      hand.m.emplace_back(d.numel(), 0.0);
    }
    UpdaterOptions o;
    o.rule = optim::RuleOptions{"test_sign_momentum", 1.0, 0.9, 0.95, 1e-8, 0.1};
    auto u = make_updater(kind, single_process(), params, o);
    const double lr = 0.05, clip = 2.0;  // the random gradients' norm is ~3.9: clipping acts
    for (int k = 0; k < 3; ++k) {
      const auto g = toy_grads(k, params);
      const double norm = u->step(lr, clip, true);
      EXPECT_GT(norm, clip);
      u->zero_grad();
      hand.step(g, lr, 0.1, clip);
    }
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor want = torch::tensor(hand.p[i], at::kDouble).view(params[i].second.sizes());
      EXPECT_LT((params[i].second.to(at::kDouble) - want).abs().max().item<double>(), 1e-5) << params[i].first;
    }
    // Not a no-op: every element moved by about lr per step.
    EXPECT_GT((params[0].second - params_on(c10::kCPU)[0].second).abs().min().item<double>(), 0.01);
  }
}

// The toy rule's state goes through each updater's checkpoint (optimizer.pt, or the ZeRO-1 shard under
// its own state name) and resumes exactly; an AdamW checkpoint is refused by a run with the toy rule.
TEST(UpdateRule, ToyRuleStateResumesExactly) {
  register_toy_rules();
  const fs::path root = fs::temp_directory_path() / "sftgo_test_toy_rule_resume";
  for (UpdaterKind kind : {UpdaterKind::kPlain, UpdaterKind::kZero1}) {
    SCOPED_TRACE(static_cast<int>(kind));
    fs::remove_all(root);
    fs::create_directories(root / "ckpt");
    UpdaterOptions o;
    o.rule.name = "test_sign_momentum";
    auto straight = params_on(c10::kCPU), first = params_on(c10::kCPU), second = params_on(c10::kCPU);
    auto u = make_updater(kind, single_process(), straight, o);
    auto a = make_updater(kind, single_process(), first, o);
    for (int k = 0; k < 4; ++k) {
      toy_grads(k, straight);
      u->step(0.05, 0.0, true);
      u->zero_grad();
      if (k >= 2) continue;
      toy_grads(k, first);
      a->step(0.05, 0.0, true);
      a->zero_grad();
    }
    checkpoint::SaveRequest r;
    a->add_to_save(r, (root / "staging").string());
    if (r.optimizer != nullptr) {
      torch::serialize::OutputArchive archive;
      r.optimizer->save(archive);
      archive.save_to((root / "ckpt" / "optimizer.pt").string());
    }
    for (const auto& f : r.move_files) fs::rename(f, root / "ckpt" / fs::path(f).filename());
    {
      torch::NoGradGuard no_grad;  // the checkpoint's weights
      for (size_t i = 0; i < first.size(); ++i) second[i].second.copy_(first[i].second);
    }
    auto b = make_updater(kind, single_process(), second, o);
    b->resume((root / "ckpt").string());
    for (int k = 2; k < 4; ++k) {
      toy_grads(k, second);
      b->step(0.05, 0.0, true);
      b->zero_grad();
    }
    for (size_t i = 0; i < second.size(); ++i)
      EXPECT_TRUE(torch::equal(second[i].second, straight[i].second)) << second[i].first;
    // The same checkpoint under optim.name adamw: refused, naming the rule that saved it.
    auto adamw = make_updater(kind, single_process(), params_on(c10::kCPU), UpdaterOptions{});
    try {
      adamw->resume((root / "ckpt").string());
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(std::string(e.what()).find("update rule 'test_sign_momentum', but optim.name is 'adamw'"),
                std::string::npos)
          << e.what();
    }
  }
  fs::remove_all(root);
}

// A rule that needs whole matrices gets each parameter in its shape from the plain updater, and ZeRO-1
// (flat shards) refuses it at set-up, as `sftgo-train config` does.
TEST(UpdateRule, WholeMatrixRuleGetsWholeParametersAndZero1RefusesIt) {
  register_toy_rules();
  auto params = params_on(c10::kCPU);
  const at::Tensor w0 = params[0].second.detach().clone();
  UpdaterOptions o;
  o.rule.name = "test_whole_matrix";
  auto u = make_updater(UpdaterKind::kPlain, single_process(), params, o);
  WholeMatrix::shapes.clear();
  const auto g = toy_grads(0, params);
  u->step(0.1, 0.0, true);
  EXPECT_EQ(WholeMatrix::shapes, (std::vector<std::vector<int64_t>>{{4, 3}, {3}}));
  EXPECT_TRUE(torch::allclose(params[0].second, w0 - 0.1 * g[0] / g[0].norm(), 0, 1e-6));
  for (bool through_config : {false, true}) {
    try {
      if (through_config) {
        OptimConfig c;
        c.name = "test_whole_matrix";
        optim::check_update_rule(c, /*zero1=*/true);
      } else {
        make_updater(UpdaterKind::kZero1, single_process(), params_on(c10::kCPU), o);
      }
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(std::string(e.what()).find("optim.name 'test_whole_matrix' updates whole matrices, but dist.zero1"),
                std::string::npos)
          << e.what();
    }
  }
  OptimConfig c;
  c.name = "test_whole_matrix";
  EXPECT_NO_THROW(optim::check_update_rule(c, /*zero1=*/false));
}

}  // namespace
}  // namespace sftgo::train
