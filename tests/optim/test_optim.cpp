// Checked against fixtures written by scripts/gen_optim_fixture.py with transformers' schedulers
// and torch.optim.AdamW (Python), the references users compare runs with.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

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
  RuleOptions o{"adamw", j["lr"], j["beta1"], j["beta2"], j["eps"], j["weight_decay"]};
  auto opt = std::make_unique<RuleOptimizer>(
      NamedParameters{{"model.layers.0.mlp.up_proj.weight", w}, {"model.layers.0.input_layernorm.weight", b}}, o);
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

// (All parameters are 2-D so that RuleOptimizer decays them like the reference, which decays all.)
// The AdamW rule must be LibTorch's AdamW bit for bit (resume and HF-parity tests rely on the update
// being the reference one); tensors larger than a slice exercise the sliced path, the odd sizes the
// vectorised loops' tails, a non-contiguous gradient the unsliced fallback.
TEST(AdamW, RuleEqualsLibTorchAdamWBitForBit) {
  torch::manual_seed(7);
  const int64_t big = kRuleSliceElements + 37;  // [2, big]: three slices, the last one short
  std::vector<torch::Tensor> ours, theirs;
  for (auto shape : std::vector<std::vector<int64_t>>{{2, big}, {3, 5}, {1000, 3}}) {
    auto p = torch::randn(shape);
    ours.push_back(p.clone().set_requires_grad(true));
    theirs.push_back(p.clone().set_requires_grad(true));
  }
  RuleOptions o{"adamw", 1e-3, 0.9, 0.95, 1e-8, 0.1};
  RuleOptimizer lean({{"a.weight", ours[0]}, {"b.weight", ours[1]}, {"c.weight", ours[2]}}, o);
  auto base = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
  torch::optim::AdamW reference(theirs, base);
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < ours.size(); ++i) {
      auto g = i == 2 ? torch::randn({3, 1000}).t() : torch::randn(ours[i].sizes());  // [1000,3] non-contiguous
      ours[i].mutable_grad() = g.clone();
      theirs[i].mutable_grad() = g.clone();
    }
    lean.step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i)
    EXPECT_TRUE(torch::equal(ours[i].detach(), theirs[i].detach()))
        << "parameter " << i << " differs: max |diff| " << (ours[i] - theirs[i]).abs().max().item<double>() << " at "
        << (ours[i] - theirs[i]).abs().flatten().argmax().item<int64_t>() << ", "
        << (ours[i] != theirs[i]).sum().item<int64_t>() << " elements";
}

// optimizer.pt stays LibTorch's AdamW archive: a file torch::optim::AdamW wrote (every sftgo before the
// update rules saved LeanAdamW, i.e. torch::optim::AdamW::save) resumes into the AdamW rule, and the
// rule's file resumes into torch::optim::AdamW; both continue bit for bit like an uninterrupted run.
TEST(AdamW, OptimizerArchiveIsLibTorchsBothWays) {
  const RuleOptions o{"adamw", 1e-2, 0.9, 0.95, 1e-8, 0.1};
  auto torch_options = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps);
  auto make = [] {
    torch::manual_seed(11);
    return NamedParameters{{"a.weight", torch::randn({5, 7}).set_requires_grad(true)},
                           {"a.norm.weight", torch::randn({7}).set_requires_grad(true)}};
  };
  auto grads = [](const NamedParameters& ps, int step) {
    torch::manual_seed(100 + step);
    for (const auto& [n, p] : ps) p.mutable_grad() = torch::randn(p.sizes());
  };
  // LibTorch's optimizer with the same groups as RuleOptimizer (decay, then no decay).
  auto libtorch_adamw = [&](const NamedParameters& ps) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{ps[0].second},
                        std::make_unique<torch::optim::AdamWOptions>(torch_options.weight_decay(o.weight_decay)));
    groups.emplace_back(std::vector<torch::Tensor>{ps[1].second},
                        std::make_unique<torch::optim::AdamWOptions>(torch_options.weight_decay(0.0)));
    return std::make_unique<torch::optim::AdamW>(std::move(groups), torch_options);
  };
  auto bytes_of = [](torch::optim::Optimizer& opt) {
    torch::serialize::OutputArchive a;
    opt.save(a);
    std::ostringstream out;
    a.save_to(out);
    return out.str();
  };
  auto load_into = [](torch::optim::Optimizer& opt, const std::string& bytes) {
    std::istringstream in(bytes);
    torch::serialize::InputArchive a;
    a.load_from(in);
    opt.load(a);
  };
  // Uninterrupted: 4 steps of the rule.
  auto straight = make();
  RuleOptimizer whole(straight, o);
  for (int k = 0; k < 4; ++k) {
    grads(straight, k);
    whole.step();
  }
  for (bool libtorch_first : {true, false}) {
    SCOPED_TRACE(libtorch_first ? "LibTorch's file resumed by the rule" : "the rule's file resumed by LibTorch");
    auto first = make(), second = make();
    std::unique_ptr<torch::optim::Optimizer> a, b;
    if (libtorch_first) {
      a = libtorch_adamw(first);
      b = std::make_unique<RuleOptimizer>(second, o);
    } else {
      a = std::make_unique<RuleOptimizer>(first, o);
      b = libtorch_adamw(second);
    }
    for (int k = 0; k < 2; ++k) {
      grads(first, k);
      a->step();
    }
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < first.size(); ++i) second[i].second.copy_(first[i].second);  // the saved weights
    }
    load_into(*b, bytes_of(*a));
    for (int k = 2; k < 4; ++k) {
      grads(second, k);
      b->step();
    }
    for (size_t i = 0; i < second.size(); ++i)
      EXPECT_TRUE(torch::equal(second[i].second, straight[i].second)) << second[i].first;
  }
}

// A rule registered here (not built in): its state is saved under its own names, and a file of
// another rule is refused, naming both (so optim.name cannot change silently on resume).
TEST(UpdateRule, RegistryAndArchiveNameTheRule) {
  struct Momentum final : UpdateRule {
    std::string name() const override { return "test_momentum"; }
    std::vector<std::string> state_names() const override { return {"velocity"}; }
    void apply(const at::Tensor& p, const at::Tensor& g, at::TensorList s, double lr, int64_t) const override {
      s[0].mul_(0.5).add_(g);
      p.add_(s[0], -lr);
    }
  };
  register_update_rule("test_momentum", [](const RuleOptions&) { return std::make_unique<Momentum>(); });
  EXPECT_THROW(register_update_rule("test_momentum", [](const RuleOptions&) { return std::make_unique<Momentum>(); }),
               Error);
  const auto names = update_rule_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "adamw"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "test_momentum"), names.end());
  try {
    make_update_rule(RuleOptions{"adamm"});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("optim.name: unknown update rule 'adamm'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.hint()).find("adamw"), std::string::npos) << e.hint();
  }
  NamedParameters ps = {{"w.weight", torch::ones({2, 3}).set_requires_grad(true)}};
  RuleOptimizer mom(ps, RuleOptions{"test_momentum", 0.1});
  ps[0].second.mutable_grad() = torch::full({2, 3}, 2.0);
  mom.step();
  mom.step();  // velocity 2, then 0.5 * 2 + 2 = 3; w = 1 - 0.1 * 2 - 0.1 * 3 (no weight decay: 0 by default)
  EXPECT_TRUE(torch::allclose(ps[0].second, torch::full({2, 3}, 0.5), 0, 1e-6));
  ASSERT_NE(mom.state_of(ps[0].second), nullptr);
  EXPECT_EQ(mom.state_of(ps[0].second)->step, 2);
  torch::serialize::OutputArchive a;
  mom.save(a);
  std::ostringstream out;
  a.save_to(out);
  RuleOptimizer adamw(ps, RuleOptions{});
  std::istringstream in(out.str());
  torch::serialize::InputArchive back;
  back.load_from(in);
  try {
    adamw.load(back);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("saved by update rule 'test_momentum', but optim.name is 'adamw'"),
              std::string::npos)
        << e.what();
  }
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
