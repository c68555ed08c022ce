// Updater checks that need no trainer: optimizer state resumed onto the parameters' device, and each
// implementation's update equal to LibTorch's AdamW.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "sftgo/checkpoint/checkpoint.h"
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
  for (const auto& group : back.optimizer->param_groups()) {
    for (const auto& p : group.params()) {
      auto it = back.optimizer->state().find(p.unsafeGetTensorImpl());
      ASSERT_NE(it, back.optimizer->state().end());
      const auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      EXPECT_TRUE(s.exp_avg().is_meta());
      EXPECT_TRUE(s.exp_avg_sq().is_meta());
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
    o.adamw.weight_decay = 0.0;
    auto u = make_updater(kind, single_process(), params, o);
    torch::optim::AdamW adamw(
        {ref[0].second, ref[1].second},
        torch::optim::AdamWOptions(1e-2).betas({o.adamw.beta1, o.adamw.beta2}).eps(o.adamw.eps).weight_decay(0.0));
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

}  // namespace
}  // namespace sftgo::train
