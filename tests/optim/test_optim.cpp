// Checked against fixtures written by scripts/gen_optim_fixture.py with transformers' schedulers
// and torch.optim.AdamW (Python), the references users compare runs with.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "sftgo/core/error.h"
#include "sftgo/optim/optim.h"

namespace sftgo::optim {
namespace {

nlohmann::json fixture() {
  std::ifstream in(std::string(SFTGO_SOURCE_DIR) + "/tests/optim/fixtures/optim_reference.json");
  return nlohmann::json::parse(in);
}

TEST(Schedule, MatchesHuggingFaceSchedulers) {
  for (const auto& c : fixture()["schedules"]) {
    LrSchedule s;
    s.peak_lr = c["peak"];
    s.warmup_steps = c["warmup"];
    s.total_steps = c["total"];
    s.decay = parse_lr_decay(c["decay"]);
    const auto& rates = c["hf_rates"];
    for (int64_t k = 0; k < s.total_steps; ++k) {
      // Tolerance: both sides compute the same closed form in double; 1e-15 relative covers the
      // different operation order.
      EXPECT_NEAR(lr_at(s, k), rates[k].get<double>(), 1e-15 * s.peak_lr + 1e-20)
          << c["decay"] << " warmup " << s.warmup_steps << " total " << s.total_steps << " step " << k;
    }
  }
}

TEST(Schedule, MinLrRatioAndWarmupResolution) {
  LrSchedule s{1.0, 0, 10, LrDecay::kCosine, 0.1};
  EXPECT_DOUBLE_EQ(lr_at(s, 0), 1.0);
  EXPECT_NEAR(lr_at(s, 10), 0.1, 1e-12);
  EXPECT_NEAR(lr_at(s, 50), 0.1, 1e-12);  // past the end it stays at the floor
  EXPECT_EQ(resolve_warmup_steps(-1, 0.03, 100), 3);
  EXPECT_EQ(resolve_warmup_steps(7, 0.03, 100), 7);
  EXPECT_THROW(parse_lr_decay("exp"), Error);
}

TEST(AdamW, MatchesTorchPythonWithDecayGroups) {
  const auto j = fixture()["adamw"];
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto w = torch::tensor(j["w0"].get<std::vector<double>>(), opts).reshape({4, 3}).set_requires_grad(true);
  auto b = torch::tensor(j["b0"].get<std::vector<double>>(), opts).set_requires_grad(true);
  AdamWOptions o{j["lr"], j["beta1"], j["beta2"], j["eps"], j["weight_decay"]};
  auto opt = make_adamw({{"model.layers.0.mlp.up_proj.weight", w}, {"model.layers.0.input_layernorm.weight", b}}, o);
  for (const auto& g : j["grads"]) {
    w.mutable_grad() = torch::tensor(g[0].get<std::vector<double>>(), opts).reshape({4, 3});
    b.mutable_grad() = torch::tensor(g[1].get<std::vector<double>>(), opts);
    opt->step();
  }
  auto w2 = torch::tensor(j["w2"].get<std::vector<double>>(), opts).reshape({4, 3});
  auto b2 = torch::tensor(j["b2"].get<std::vector<double>>(), opts);
  // float64 on both sides, same update formula: agreement to ~1e-15; 1e-12 leaves room for order.
  EXPECT_LT((w.detach() - w2).abs().max().item<double>(), 1e-12);
  EXPECT_LT((b.detach() - b2).abs().max().item<double>(), 1e-12);
}

// (All parameters are 2-D so that make_adamw decays them like the reference, which decays all.)
// LeanAdamW must be LibTorch's AdamW bit for bit (resume and HF-parity tests rely on the update
// being the reference one); tensors larger than a slice exercise the sliced path, the odd sizes the
// vectorised loops' tails, a non-contiguous gradient the unsliced fallback.
TEST(AdamW, LeanAdamWEqualsLibTorchAdamWBitForBit) {
  torch::manual_seed(7);
  const int64_t big = kAdamWSliceElements + 37;  // [2, big]: three slices, the last one short
  std::vector<torch::Tensor> ours, theirs;
  for (auto shape : std::vector<std::vector<int64_t>>{{2, big}, {3, 5}, {1000, 3}}) {
    auto p = torch::randn(shape);
    ours.push_back(p.clone().set_requires_grad(true));
    theirs.push_back(p.clone().set_requires_grad(true));
  }
  AdamWOptions o{1e-3, 0.9, 0.95, 1e-8, 0.1};
  auto lean = make_adamw({{"a.weight", ours[0]}, {"b.weight", ours[1]}, {"c.weight", ours[2]}}, o);
  ASSERT_NE(dynamic_cast<LeanAdamW*>(lean.get()), nullptr);
  auto base = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
  torch::optim::AdamW reference(theirs, base);
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < ours.size(); ++i) {
      auto g = i == 2 ? torch::randn({3, 1000}).t() : torch::randn(ours[i].sizes());  // [1000,3] non-contiguous
      ours[i].mutable_grad() = g.clone();
      theirs[i].mutable_grad() = g.clone();
    }
    lean->step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i)
    EXPECT_TRUE(torch::equal(ours[i].detach(), theirs[i].detach()))
        << "parameter " << i << " differs: max |diff| " << (ours[i] - theirs[i]).abs().max().item<double>() << " at "
        << (ours[i] - theirs[i]).abs().flatten().argmax().item<int64_t>() << ", "
        << (ours[i] != theirs[i]).sum().item<int64_t>() << " elements";
}

TEST(AdamW, NoDecayForNormsBiasesAndVectors) {
  EXPECT_TRUE(decays("model.layers.0.self_attn.q_proj.weight", torch::zeros({2, 2})));
  EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight", torch::zeros({2})));
  EXPECT_FALSE(decays("model.norm.weight", torch::zeros({2, 2})));
  EXPECT_FALSE(decays("some.bias", torch::zeros({2, 2})));
}

TEST(Clip, ClipsGlobalNormAndReportsItBefore) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  auto n = torch::cat({a.grad(), b.grad()}).norm().item<double>();
  EXPECT_NEAR(n, 1.0, 1e-5);
  // Non-finite norms are reported and the gradients left alone so the step can be skipped.
  b.mutable_grad() = torch::tensor({NAN});
  EXPECT_TRUE(std::isnan(clip_grad_norm({a, b}, 1.0)));
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
}

}  // namespace
}  // namespace sftgo::optim
