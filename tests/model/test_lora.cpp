// LoRA adapters (model/lora.h): init, the forward against the formula, freezing, merge, PEFT
// adapter save/load round trip and its errors, Rho-1 disable, activation checkpointing with dropout.
// Parity with PEFT itself (logits, gradients, merge, from_pretrained) is tests/python/test_lora_peft.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "../common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"

namespace fs = std::filesystem;
using namespace sftgo;
using namespace sftgo::model;

namespace {

LlamaConfig tiny(bool tied = false) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.num_hidden_layers = 2;
  c.tie_word_embeddings = tied;
  c.rope_scaling->original_max_position_embeddings = 8;
  return c;
}

// Random non-zero B (PEFT starts B at zero, which would make every adapter test vacuous).
void randomize_b(LlamaModelImpl& m, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, p] : lora_named_parameters(m))
    if (name.find("lora_B") != std::string::npos)
      p.copy_(at::normal(0.0, 0.2, p.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat)));
}

torch::Tensor ids_for(const LlamaConfig& c) {
  auto gen = at::detail::createCPUGenerator(3);
  return at::randint(0, c.vocab_size, {2, 10}, gen, torch::TensorOptions().dtype(torch::kInt64));
}

torch::Tensor logits_of(LlamaModelImpl& m, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  return m.logits(m.forward(ids));
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

int expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    return 1;
  }
  ADD_FAILURE() << "no error; expected one mentioning " << needle;
  return 0;
}

}  // namespace

TEST(Lora, InitFreezesBaseAndStartsAtTheBaseModel) {
  LlamaConfig c = tiny();
  LlamaModel m(c, ModelOptions{.seed = 1});
  torch::Tensor ids = ids_for(c);
  torch::Tensor base = logits_of(*m, ids);
  LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  auto params = apply_lora(*m, o, 7);
  ASSERT_EQ(params.size(), 2u * 7 * 2);  // A and B for 7 projections in 2 layers
  for (auto& item : m->named_parameters()) {
    const std::string& name = item.key();
    const torch::Tensor& p = item.value();
    const bool lora = name.ends_with(".lora_A") || name.ends_with(".lora_B");
    EXPECT_EQ(p.requires_grad(), lora) << name;
    if (lora) EXPECT_EQ(p.scalar_type(), torch::kFloat) << name;
  }
  for (auto& [name, p] : lora_named_parameters(*m)) {
    if (name.find("lora_A") != std::string::npos) {
      // PEFT: kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); not all zero.
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.size(1)));
      EXPECT_LE(p.abs().max().item<double>(), bound) << name;
      EXPECT_GT(p.abs().max().item<double>(), 0.5 * bound) << name;
      EXPECT_EQ(p.size(0), 4);
    } else {
      EXPECT_EQ(p.abs().max().item<double>(), 0.0) << name;
    }
  }
  EXPECT_EQ(lora_named_parameters(*m).front().first, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  // B = 0: the adapted model is the base model exactly.
  EXPECT_TRUE(torch::equal(logits_of(*m, ids), base));
  // HF names stay the base weights only.
  for (auto& [name, p] : m->hf_named_parameters()) EXPECT_EQ(name.find("lora"), std::string::npos) << name;
  // Same seed, same adapters (every rank draws the same A).
  LlamaModel m2(c, ModelOptions{.seed = 1});
  apply_lora(*m2, o, 7);
  EXPECT_TRUE(torch::equal(lora_named_parameters(*m2)[0].second, lora_named_parameters(*m)[0].second));
}

TEST(Lora, LinearForwardIsTheFormula) {
  for (bool rslora : {false, true}) {
    LlamaConfig c = tiny();
    LlamaModel m(c, ModelOptions{.seed = 2});
    LoraOptions o;
    o.rank = 3;
    o.alpha = 5;
    o.use_rslora = rslora;
    o.target_modules = {"up_proj"};
    apply_lora(*m, o, 1);
    randomize_b(*m, 4);
    LinearImpl& l = *m->layers->ptr<BlockImpl>(1)->mlp->up_proj;
    EXPECT_DOUBLE_EQ(l.lora_scaling, rslora ? 5.0 / std::sqrt(3.0) : 5.0 / 3.0);
    torch::Tensor x = torch::randn({2, 5, c.hidden_size});
    torch::NoGradGuard ng;
    // Reference in float64: W x + s * B A x.
    torch::Tensor xd = x.to(torch::kDouble);
    torch::Tensor want =
        xd.matmul(l.weight.to(torch::kDouble).t()) +
        l.lora_scaling * xd.matmul(l.lora_A.to(torch::kDouble).t()).matmul(l.lora_B.to(torch::kDouble).t());
    // fp32 matmuls of width <= 48 with O(1) values: ~1e-6 rounding.
    EXPECT_LT(max_abs(l.forward(x).to(torch::kDouble), want), 1e-5);
  }
}

TEST(Lora, LmHeadNeedsAnUntiedHead) {
  LlamaModel tied(tiny(/*tied=*/true), ModelOptions{});
  LoraOptions o;
  o.target_modules = {"q_proj", "lm_head"};
  expect_error([&] { apply_lora(*tied, o, 0); }, "tie_word_embeddings");
  LlamaModel untied(tiny(), ModelOptions{});
  apply_lora(*untied, o, 0);
  EXPECT_EQ(lora_named_parameters(*untied).back().first, "base_model.model.lm_head.lora_B.weight");
  o.target_modules = {"embed_tokens"};
  expect_error([&] { o.validate(); }, "unknown module 'embed_tokens'");
}

TEST(Lora, MergeEqualsTheAdaptedModelAndSavesPlainHf) {
  for (c10::ScalarType dt : {torch::kFloat, torch::kBFloat16}) {
    LlamaConfig c = tiny();
    LlamaModel m(c, ModelOptions{.dtype = dt, .seed = 3});
    LoraOptions o;
    o.rank = 4;
    o.target_modules = {"q_proj", "v_proj", "down_proj", "lm_head"};
    apply_lora(*m, o, 5);
    randomize_b(*m, 6);
    torch::Tensor ids = ids_for(c);
    torch::Tensor adapted = logits_of(*m, ids).to(torch::kFloat);
    merge_lora(*m);
    EXPECT_FALSE(has_lora(*m));
    EXPECT_TRUE(lora_named_parameters(*m).empty());
    for (auto& item : m->named_parameters()) EXPECT_EQ(item.key().find("lora"), std::string::npos) << item.key();
    torch::Tensor merged = logits_of(*m, ids).to(torch::kFloat);
    // fp32: the same sums in another order (~1e-6 relative on logits of size ~1). bf16: the merged
    // weight is rounded to bf16 once (2^-8 relative) where the unmerged path adds an fp32 delta.
    const double tol = dt == torch::kFloat ? 1e-4 : 0.1;
    EXPECT_LT(max_abs(adapted, merged), tol) << c10::toString(dt);
    EXPECT_GT(max_abs(adapted, logits_of(*LlamaModel(c, ModelOptions{.dtype = dt, .seed = 3}), ids).to(torch::kFloat)),
              10 * (dt == torch::kFloat ? 1e-4 : 0.01))
        << "the adapters must change the model for this test to mean anything";
    test_util::TempDir dir;
    save_pretrained(*m, dir.path() + "/merged");
    LlamaModel back = load_pretrained(dir.path() + "/merged", ModelOptions{.dtype = dt});
    EXPECT_TRUE(torch::equal(logits_of(*back, ids), logits_of(*m, ids)));
  }
}

TEST(Lora, DisableGivesTheBaseModel) {
  LlamaConfig c = tiny();
  LlamaModel m(c, ModelOptions{.seed = 4});
  torch::Tensor ids = ids_for(c);
  torch::Tensor base = logits_of(*m, ids);
  apply_lora(*m, LoraOptions{}, 1);
  randomize_b(*m, 2);
  torch::Tensor adapted = logits_of(*m, ids);
  EXPECT_GT(max_abs(adapted, base), 1e-3);
  set_lora_disabled(*m, true);
  EXPECT_TRUE(torch::equal(logits_of(*m, ids), base));
  set_lora_disabled(*m, false);
  EXPECT_TRUE(torch::equal(logits_of(*m, ids), adapted));
}

TEST(Lora, SaveLoadRoundTripInPeftLayout) {
  LlamaConfig c = tiny();
  LlamaModel m(c, ModelOptions{.seed = 5});
  LoraOptions o;
  o.rank = 2;
  o.alpha = 3;
  o.dropout = 0.05;
  o.use_rslora = true;
  o.target_modules = {"k_proj", "o_proj", "gate_proj"};
  o.base_model_name_or_path = "meta-llama/Llama-3.2-1B";
  apply_lora(*m, o, 8);
  randomize_b(*m, 9);
  test_util::TempDir dir;
  const std::string ad = dir.path() + "/adapter";
  save_lora_adapter(*m, ad);
  auto j = nlohmann::json::parse(read_file(ad + "/adapter_config.json"));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 2);
  EXPECT_EQ(j["lora_alpha"], 3.0);
  EXPECT_EQ(j["use_rslora"], true);
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["base_model_name_or_path"], "meta-llama/Llama-3.2-1B");
  EXPECT_EQ(j["target_modules"], nlohmann::json({"k_proj", "o_proj", "gate_proj"}));
  auto f = io::SafetensorsFile::open(ad + "/adapter_model.safetensors");
  EXPECT_EQ(f->tensors().size(), 2u * 3 * 2);
  ASSERT_NE(f->find("base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"), nullptr);
  EXPECT_EQ(f->find("base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight")->shape,
            (std::vector<int64_t>{c.intermediate_size, 2}));

  LlamaModel fresh(c, ModelOptions{.seed = 5});
  load_lora_adapter(*fresh, ad);
  EXPECT_EQ(lora_options(*fresh).target_modules, o.target_modules);
  EXPECT_DOUBLE_EQ(lora_options(*fresh).scaling(), 3.0 / std::sqrt(2.0));
  torch::Tensor ids = ids_for(c);
  EXPECT_TRUE(torch::equal(logits_of(*fresh, ids), logits_of(*m, ids)));
  // Resume: adapters already present (from the run's config) are overwritten in place.
  LlamaModel resumed(c, ModelOptions{.seed = 5});
  auto params = apply_lora(*resumed, o, 123);
  load_lora_adapter(*resumed, ad);
  EXPECT_TRUE(torch::equal(params[1], lora_named_parameters(*m)[1].second));  // same tensor object, filled
}

TEST(Lora, LoadErrorsNameTheFileAndTensor) {
  LlamaConfig c = tiny();
  LlamaModel m(c, ModelOptions{.seed = 6});
  LoraOptions o;
  o.rank = 2;
  o.target_modules = {"q_proj"};
  apply_lora(*m, o, 1);
  test_util::TempDir dir;
  const std::string ad = dir.path() + "/a";
  save_lora_adapter(*m, ad);
  const std::string cfg = read_file(ad + "/adapter_config.json");
  auto edit = [&](const std::function<void(nlohmann::json&)>& f) {
    auto j = nlohmann::json::parse(cfg);
    f(j);
    write_file_atomic(ad + "/adapter_config.json", j.dump());
  };
  auto load_fresh = [&] {
    LlamaModel x(c, ModelOptions{.seed = 6});
    load_lora_adapter(*x, ad);
  };
  // A rank the tensors do not have: named before anything of size r is allocated (issue 25 item 3:
  // "r": 2147483647 tried to allocate 256 TB).
  for (int64_t r : {int64_t{3}, int64_t{2147483647}, int64_t{1} << 31, std::numeric_limits<int64_t>::max()}) {
    edit([r](auto& j) { j["r"] = r; });
    expect_error(load_fresh, "adapter_config.json: 'r' = " + std::to_string(r) + " does not match");
    expect_error(load_fresh, "tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' of shape [2, 32]");
  }
  // Fewer targets than the file holds: unexpected tensor.
  edit([](auto& j) { j["target_modules"] = {"q_proj", "k_proj"}; });
  expect_error(load_fresh, "missing adapter tensors: base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight");
  edit([](auto& j) { j["target_modules"] = {"k_proj"}; });
  expect_error(load_fresh, "unexpected tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'");
  edit([](auto& j) { j["use_dora"] = true; });
  expect_error(load_fresh, "adapter_config.json: 'use_dora' = true is not supported");
  edit([](auto& j) { j["target_modules"] = ".*proj"; });
  expect_error(load_fresh, "'target_modules' = \".*proj\" is not supported");
  edit([](auto& j) { j["peft_type"] = "IA3"; });
  expect_error(load_fresh, "'peft_type' must be \"LORA\"");
  edit([](auto& j) { j["r"] = 0; });
  expect_error(load_fresh, "lora.rank must be >= 1");
  write_file_atomic(ad + "/adapter_config.json", "{not json");
  expect_error(load_fresh, "adapter_config.json: not valid JSON");
  expect_error(
      [&] {
        LlamaModel x(c, ModelOptions{});
        load_lora_adapter(*x, dir.path() + "/none");
      },
      "none/adapter_config.json: not found");
  // Resume into adapters of another rank.
  write_file_atomic(ad + "/adapter_config.json", cfg);
  LlamaModel other(c, ModelOptions{});
  o.rank = 4;
  apply_lora(*other, o, 1);
  expect_error([&] { load_lora_adapter(*other, ad); }, "does not match the model's adapters");
}

// Issue 25 item 4: NaN/Inf adapter tensors and a lora_alpha whose scaling overflows float32 are
// refused as loaded, naming the tensor or the field.
TEST(Lora, NonFiniteAdaptersAreRefused) {
  LlamaConfig c = tiny();
  LoraOptions o;
  o.rank = 2;
  o.target_modules = {"q_proj", "v_proj"};
  test_util::TempDir dir;
  const std::string ad = dir.path() + "/a";
  auto save_with = [&](const std::function<void(LlamaModelImpl&)>& damage, double alpha) {
    LlamaModel m(c, ModelOptions{.seed = 6});
    LoraOptions oo = o;
    oo.alpha = alpha;
    apply_lora(*m, oo, 1);
    randomize_b(*m, 2);
    damage(*m);
    save_lora_adapter(*m, ad);
  };
  auto load_fresh = [&] {
    LlamaModel x(c, ModelOptions{.seed = 6});
    load_lora_adapter(*x, ad);
  };
  auto param = [](LlamaModelImpl& m, const std::string& name) {
    for (auto& [n, p] : lora_named_parameters(m))
      if (n == name) return p;
    throw std::runtime_error("no " + name);
  };
  const std::string b1 = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
  const std::string a0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  save_with([&](LlamaModelImpl& m) { torch::NoGradGuard g; param(m, b1)[0][1] = NAN; }, 4.0);
  expect_error(load_fresh, "tensor '" + b1 + "' holds NaN or Inf values");
  save_with([&](LlamaModelImpl& m) { torch::NoGradGuard g; param(m, a0)[1][0] = INFINITY; }, 4.0);
  expect_error(load_fresh, "tensor '" + a0 + "' holds NaN or Inf values");
  save_with([](LlamaModelImpl&) {}, 1e308);
  expect_error(load_fresh, "'lora_alpha' = 1e+308 gives scaling 5e+307");
}

TEST(Lora, CheckpointingWithDropoutGivesSameGradients) {
  // Dropout draws random numbers: the recomputation must replay the forward's RNG state, else the
  // gradients belong to another mask. Without dropout the two paths are bitwise equal (test_model);
  // with it they must be too.
  for (double p : {0.0, 0.3}) {
    LlamaConfig c = tiny(true);
    LlamaModel m(c, ModelOptions{.seed = 7});
    LoraOptions o;
    o.rank = 4;
    o.dropout = p;
    apply_lora(*m, o, 3);
    randomize_b(*m, 4);
    torch::Tensor ids = ids_for(c);
    auto run = [&](bool ckpt) {
      m->zero_grad();
      m->set_activation_checkpointing(ckpt);
      torch::manual_seed(11);
      torch::Tensor logits = m->logits(m->forward(ids));
      torch::Tensor loss = torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), ids.reshape({-1}));
      loss.backward();
      std::vector<torch::Tensor> g;
      for (auto& [n, t] : lora_named_parameters(*m)) g.push_back(t.grad().clone());
      for (auto& t : m->parameters())
        if (!t.requires_grad()) EXPECT_FALSE(t.grad().defined());
      return std::make_pair(loss.item<double>(), g);
    };
    auto [l0, g0] = run(false);
    auto [l1, g1] = run(true);
    EXPECT_EQ(l0, l1) << p;
    ASSERT_EQ(g0.size(), g1.size());
    for (size_t i = 0; i < g0.size(); ++i) EXPECT_TRUE(torch::equal(g0[i], g1[i])) << "p=" << p << " grad " << i;
    if (p > 0) {  // the mask was really random: another seed gives another loss
      m->set_activation_checkpointing(false);
      torch::manual_seed(12);
      torch::Tensor logits = m->logits(m->forward(ids));
      EXPECT_NE(
          torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), ids.reshape({-1})).item<double>(),
          l0);
      // ... and eval mode (or no_grad) never drops.
      m->eval();
      torch::Tensor a = logits_of(*m, ids);
      m->train();
      EXPECT_TRUE(torch::equal(a, logits_of(*m, ids)));
    }
  }
}

TEST(Lora, TargetModulesFromConfigText) {
  EXPECT_EQ(parse_lora_target_modules("v_proj, q_proj"), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(parse_lora_target_modules("all-linear").size(), 7u);
  EXPECT_EQ(parse_lora_target_modules("all-linear,lm_head").back(), "lm_head");
  expect_error([] { parse_lora_target_modules("q_proj,qproj"); }, "lora.target_modules: unknown module 'qproj'");
  expect_error([] { parse_lora_target_modules("q_proj,,v_proj"); }, "empty name");
  expect_error([] { parse_lora_target_modules("q_proj,all-linear"); }, "lists 'q_proj' twice");
}

TEST(Lora, HeadWeightForTheFusedLossGivesTheSameLossAndGradients) {
  LlamaConfig c = tiny();
  LlamaModel m(c, ModelOptions{.seed = 8});
  LoraOptions o;
  o.rank = 4;
  o.target_modules = {"v_proj", "lm_head"};
  apply_lora(*m, o, 2);
  randomize_b(*m, 3);
  torch::Tensor ids = ids_for(c);
  auto run = [&](bool folded) {
    m->zero_grad();
    torch::Tensor h = m->forward(ids);
    torch::Tensor logits = folded ? at::linear(h, lora_head_weight(*m)) : m->logits(h);
    torch::Tensor loss = torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), ids.reshape({-1}));
    loss.backward();
    std::vector<torch::Tensor> g;
    for (auto& [n, t] : lora_named_parameters(*m)) g.push_back(t.grad().clone());
    return std::make_pair(loss.item<double>(), g);
  };
  auto [l0, g0] = run(false);
  auto [l1, g1] = run(true);
  // h (W + s B A)^T vs h W^T + s (h A^T) B^T: the same maths associated differently, fp32 rounding only.
  EXPECT_NEAR(l0, l1, 1e-5);
  for (size_t i = 0; i < g0.size(); ++i)
    EXPECT_LT(max_abs(g0[i], g1[i]), 1e-4 * g0[i].abs().max().item<double>() + 1e-7) << i;
  EXPECT_GT(g1.back().abs().max().item<double>(), 0.0);  // lm_head's B really gets a gradient
  // No head adapter: the plain head weight itself.
  set_lora_disabled(*m, true);
  EXPECT_TRUE(lora_head_weight(*m).is_same(m->lm_head->weight));
  set_lora_disabled(*m, false);
  LlamaModel d(c, ModelOptions{.seed = 8});
  o.dropout = 0.1;
  apply_lora(*d, o, 2);
  expect_error([&] { lora_head_weight(*d); }, "lora.dropout must be 0 when lm_head");
}
