// Llama model: config parsing, HF parity (logits and gradients, fp32 and bf16), packing,
// activation checkpointing, and HF-layout load/save errors.
//
// Reference fixtures come from scripts/make_tiny_llama.py (transformers, seeded); they are generated
// on first use into <build>/tests/model/fixtures (a few MB, so not committed). Without the venv the
// parity tests skip.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/generate.h"
#include "sftgo/model/llama.h"

namespace fs = std::filesystem;
using namespace sftgo;
using namespace sftgo::model;

namespace {

const std::vector<std::string> kCases = {"mha_untied_rope3", "gqa2_tied_rope3", "gqa4_untied_plain", "gqa4_tied_rope3",
                                         "gqa2_untied_plain"};

// Returns the fixture dir, generating it once; empty when generation is impossible.
std::string fixtures() {
  static std::string dir = [] {
    fs::path d = fs::path(SFTGO_BINARY_DIR) / "tests" / "model" / "fixtures";
    if (fs::exists(d / "DONE")) return d.string();
    fs::path py = fs::path(SFTGO_SOURCE_DIR) / ".venv" / "bin" / "python";
    if (!fs::exists(py)) return std::string();
    std::string cmd = py.string() + " " + SFTGO_SOURCE_DIR + "/scripts/make_tiny_llama.py " + d.string() + " > " +
                      (d.parent_path() / "make_tiny_llama.log").string() + " 2>&1";
    fs::create_directories(d.parent_path());
    if (std::system(cmd.c_str()) != 0 || !fs::exists(d / "DONE")) return std::string();
    return d.string();
  }();
  return dir;
}

// All tensors of a reference file, copied out of the mapping.
std::map<std::string, torch::Tensor> read_ref(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& v : f->tensors()) {
    auto dt = v.dtype == io::DType::kI64 ? torch::kInt64 : torch::kFloat;
    out[v.name] = torch::from_blob(const_cast<std::byte*>(v.data), v.shape, dt).clone();
  }
  return out;
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat) - b.to(torch::kFloat)).abs().max().item<double>();
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& ids) {  // [B,S,V], [B,S]
  const int64_t v = logits.size(-1), s = ids.size(1);
  return torch::nn::functional::cross_entropy(logits.slice(1, 0, s - 1).reshape({-1, v}).to(torch::kFloat),
                                              ids.slice(1, 1).reshape({-1}));
}

LlamaConfig tiny_config(int64_t kv = 2, bool tied = false) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 128;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = kv;
  c.head_dim = 8;
  c.tie_word_embeddings = tied;
  c.rope_scaling->original_max_position_embeddings = 8;
  return c;
}

fs::path temp_dir() {
  static fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("sftgo_test_model_" + std::to_string(::getpid()));
    std::system(("rm -rf '" + p.string() + "'").c_str());
    fs::create_directories(p);
    return p;
  }();
  return d;
}

#define REQUIRE_FIXTURES()                                                     \
  do {                                                                         \
    if (fixtures().empty()) GTEST_SKIP() << "no venv to generate HF fixtures"; \
  } while (0)

}  // namespace

// ---- Config --------------------------------------------------------------------------------------

TEST(LlamaConfig, Presets) {
  for (const auto& name : LlamaConfig::preset_names()) EXPECT_NO_THROW(LlamaConfig::preset(name).validate());
  auto c8 = LlamaConfig::preset("llama3.1-8b");
  EXPECT_EQ(c8.num_parameters(), 8030261248);  // the published 8.03B
  auto c1 = LlamaConfig::preset("llama3.2-1b");
  EXPECT_EQ(c1.num_parameters(), 1235814400);  // 1.24B (tied)
  EXPECT_EQ(LlamaConfig::preset("llama3.1-70b").num_parameters(), 70553706496);
  EXPECT_EQ(LlamaConfig::preset("llama3.2-3b").num_parameters(), 3212749824);
  EXPECT_THROW(LlamaConfig::preset("gpt2"), Error);
}

TEST(LlamaConfig, JsonBothRopeFormats) {
  auto c = LlamaConfig::preset("llama3.2-1b");
  auto back = LlamaConfig::from_json(c.to_json());
  EXPECT_EQ(back.hidden_size, 2048);
  EXPECT_EQ(back.head_dim, 64);
  ASSERT_TRUE(back.rope_scaling.has_value());
  EXPECT_EQ(back.rope_scaling->factor, 32.0);
  EXPECT_EQ(back.eos_token_ids.size(), 3u);
  EXPECT_TRUE(back.tie_word_embeddings);
  const std::string v5 = R"({"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
    "num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-5,"max_position_embeddings":64,
    "rope_parameters":{"rope_theta":1000.0,"rope_type":"llama3","factor":4.0,"low_freq_factor":1.0,
    "high_freq_factor":4.0,"original_max_position_embeddings":32},"eos_token_id":[5,6]})";
  auto c5 = LlamaConfig::from_json(v5);
  EXPECT_EQ(c5.rope_theta, 1000.0);
  EXPECT_EQ(c5.head_dim, 4);
  EXPECT_EQ(c5.rope_scaling->original_max_position_embeddings, 32);
  auto plain = LlamaConfig::from_json(R"({"vocab_size":10,"hidden_size":8,"intermediate_size":16,
    "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":10.0,"rope_scaling":null})");
  EXPECT_FALSE(plain.rope_scaling.has_value());
  EXPECT_EQ(plain.num_key_value_heads, 2);
  EXPECT_THROW(LlamaConfig::from_json(R"({"vocab_size":10})"), Error);
  EXPECT_THROW(LlamaConfig::from_json(R"({"vocab_size":10,"hidden_size":8,"intermediate_size":16,
    "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2})"),
               Error);
  EXPECT_THROW(LlamaConfig::from_json(R"({"vocab_size":10,"hidden_size":8,"intermediate_size":16,
    "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn","factor":2.0}})"),
               Error);
}

// ---- HF parity -----------------------------------------------------------------------------------

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, Fp32LogitsAndGradients) {
  REQUIRE_FIXTURES();
  const std::string dir = fixtures() + "/" + GetParam();
  auto ref = read_ref(dir + "/ref.safetensors");
  LlamaModel model = load_pretrained(dir + "/model");
  torch::Tensor ids = ref["ids"];
  torch::Tensor logits = model->logits(model->forward(ids));
  const double logit_err = max_abs(logits, ref["logits"]);
  // 1e-4: same ops in the same order on the same CPU kernels; what remains is fp32 summation-order
  // noise in matmuls (K<=128, |logits|~1) and SDPA, ~1e-6 in practice.
  EXPECT_LE(logit_err, 1e-4);
  torch::Tensor loss = next_token_loss(logits, ids);
  EXPECT_NEAR(loss.item<double>(), ref["loss"].item<double>(), 1e-5);
  loss.backward();
  double worst = 0;
  std::string worst_name;
  for (auto& [name, p] : model->hf_named_parameters()) {
    ASSERT_TRUE(ref.count("grad." + name)) << name;
    ASSERT_TRUE(p.grad().defined()) << name;
    double e = max_abs(p.grad(), ref["grad." + name]);
    if (e > worst) worst = e, worst_name = name;
    // 1e-4 absolute (gradients are ~1e-3..1e-1): the backward sums the same fp32 products in a
    // slightly different order than autograd in Python does; errors are ~1e-7.
    EXPECT_LE(e, 1e-4) << name;
  }
  std::printf("[parity] %-20s fp32 logits max|err| %.3g, grads max|err| %.3g (%s)\n", GetParam().c_str(), logit_err,
              worst, worst_name.c_str());
}

TEST_P(Parity, Bf16Logits) {
  REQUIRE_FIXTURES();
  const std::string dir = fixtures() + "/" + GetParam();
  auto ref = read_ref(dir + "/ref.safetensors");
  ModelOptions opt;
  opt.dtype = torch::kBFloat16;
  LlamaModel model = load_pretrained(dir + "/model", opt);
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model->logits(model->forward(ref["ids"])).to(torch::kFloat);
  const double vs_hf_bf16 = max_abs(logits, ref["logits_bf16"]);
  const double vs_fp32 = max_abs(logits, ref["logits"]);
  // vs HF in bf16: the same bf16 op sequence, but bf16 rounding of intermediate results (8-bit
  // mantissa, eps 2^-8 ~ 4e-3 relative) amplifies any accumulation-order difference to a few ulps of
  // |logits| ~ 1: bound 3e-2. vs fp32: the bf16 quantisation itself, bound 1e-1.
  EXPECT_LE(vs_hf_bf16, 3e-2);
  EXPECT_LE(vs_fp32, 1e-1);
  std::printf("[parity] %-20s bf16 logits max|err| vs HF bf16 %.3g, vs HF fp32 %.3g\n", GetParam().c_str(), vs_hf_bf16,
              vs_fp32);
}

TEST_P(Parity, GreedyGenerationMatchesTransformers) {
  REQUIRE_FIXTURES();
  const std::string dir = fixtures() + "/" + GetParam();
  auto ref = read_ref(dir + "/ref.safetensors");
  LlamaModel model = load_pretrained(dir + "/model");
  torch::Tensor prompt = ref["gen_prompt"];
  std::vector<int64_t> p(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  GenerateOptions g;
  g.max_new_tokens = ref["gen_greedy"].numel() - prompt.numel();
  g.stop_ids = {};  // the reference ran with eos disabled
  std::vector<int64_t> out = generate(*model, p, g);
  torch::Tensor want = ref["gen_greedy"].slice(0, prompt.numel());
  ASSERT_EQ(static_cast<int64_t>(out.size()), want.numel());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], want[i].item<int64_t>()) << "token " << i;
}

INSTANTIATE_TEST_SUITE_P(Tiny, Parity, ::testing::ValuesIn(kCases));

// ---- Packing and checkpointing (self-consistency) -------------------------------------------------

TEST(LlamaModel, PackedEqualsSeparateDocuments) {
  torch::manual_seed(0);
  LlamaConfig c = tiny_config();
  LlamaModel model(c, ModelOptions{.seed = 3});
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> lens = {5, 9, 2};  // one packed row of 16 tokens
  torch::Tensor ids = torch::randint(0, c.vocab_size, {1, 16}, torch::kInt64);
  std::vector<torch::Tensor> doc_parts;
  for (size_t d = 0; d < lens.size(); ++d) doc_parts.push_back(torch::full({lens[d]}, static_cast<int64_t>(d)));
  torch::Tensor doc = torch::cat(doc_parts).unsqueeze(0);
  torch::Tensor pos = document_position_ids(doc);
  EXPECT_EQ(pos[0][5].item<int64_t>(), 0);
  EXPECT_EQ(pos[0][13].item<int64_t>(), 8);
  torch::Tensor packed = model->forward(ids, pos, document_causal_mask(doc));
  int64_t start = 0;
  for (int64_t len : lens) {
    torch::Tensor alone = model->forward(ids.slice(1, start, start + len));
    // Same maths on fewer keys: only fp32 summation-order noise.
    EXPECT_LE(max_abs(alone, packed.slice(1, start, start + len)), 1e-5);
    start += len;
  }
}

TEST(LlamaModel, ActivationCheckpointingGivesSameGradients) {
  for (bool with_mask : {false, true}) {
    LlamaConfig c = tiny_config(1, true);
    LlamaModel model(c, ModelOptions{.seed = 5});
    torch::manual_seed(1);
    torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 12}, torch::kInt64);
    torch::Tensor doc = torch::cat({torch::zeros({2, 7}, torch::kInt64), torch::ones({2, 5}, torch::kInt64)}, 1);
    torch::Tensor pos = with_mask ? document_position_ids(doc) : torch::Tensor();
    torch::Tensor mask = with_mask ? document_causal_mask(doc) : torch::Tensor();
    auto run = [&](bool ckpt) {
      model->zero_grad();
      model->set_activation_checkpointing(ckpt);
      torch::Tensor loss = next_token_loss(model->logits(model->forward(ids, pos, mask)), ids);
      loss.backward();
      std::vector<torch::Tensor> g;
      for (auto& p : model->parameters()) g.push_back(p.grad().clone());
      return std::make_pair(loss.item<double>(), g);
    };
    auto [l0, g0] = run(false);
    auto [l1, g1] = run(true);
    EXPECT_EQ(l0, l1);
    ASSERT_EQ(g0.size(), g1.size());
    // The recomputation runs the identical kernels on identical inputs: bitwise equal.
    for (size_t i = 0; i < g0.size(); ++i) EXPECT_TRUE(torch::equal(g0[i], g1[i])) << i;
  }
}

TEST(LlamaModel, KvCacheMatchesFullForward) {
  LlamaConfig c = tiny_config(2);
  LlamaModel model(c, ModelOptions{.seed = 9});
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(0, c.vocab_size, {1, 20}, torch::kInt64);
  torch::Tensor full = model->forward(ids);
  KVCache cache = KVCache::create(c, 1, 32, torch::TensorOptions().dtype(torch::kFloat));
  torch::Tensor a = model->forward_cached(ids.slice(1, 0, 7), cache);   // prefill
  torch::Tensor b = model->forward_cached(ids.slice(1, 7, 8), cache);   // one token
  torch::Tensor d = model->forward_cached(ids.slice(1, 8, 20), cache);  // a chunk at an offset
  EXPECT_LE(max_abs(torch::cat({a, b, d}, 1), full), 1e-5);
}

// ---- Load / save ---------------------------------------------------------------------------------

TEST(LlamaWeights, SaveLoadRoundTripSharded) {
  for (bool tied : {false, true}) {
    LlamaConfig c = tiny_config(2, tied);
    LlamaModel model(c, ModelOptions{.seed = 11});
    const std::string dir = (temp_dir() / (tied ? "rt_tied" : "rt")).string();
    save_pretrained(*model, dir, SaveOptions{.max_shard_bytes = 20000});
    EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
    EXPECT_TRUE(fs::exists(dir + "/config.json"));
    LlamaModel back = load_pretrained(dir);
    auto a = model->hf_named_parameters(), b = back->hf_named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    }
    // bf16 load of an fp32 checkpoint converts on the fly.
    ModelOptions bf;
    bf.dtype = torch::kBFloat16;
    LlamaModel half = load_pretrained(dir, bf);
    EXPECT_TRUE(torch::equal(half->norm->weight, model->norm->weight.to(torch::kBFloat16)));
  }
}

namespace {
// Rewrites `src` checkpoint tensors through `edit` into dir/model.safetensors (+ config).
void write_edited(const std::string& src_dir, const std::string& dir,
                  const std::function<void(std::vector<io::TensorSource>&)>& edit,
                  const io::SafetensorsCheckpoint& ck) {
  std::vector<io::TensorSource> ts;
  for (const auto* v : ck.tensors()) ts.push_back(io::TensorSource::borrow(v->name, v->dtype, v->shape, v->data));
  edit(ts);
  fs::create_directories(dir);
  fs::copy_file(src_dir + "/config.json", dir + "/config.json", fs::copy_options::overwrite_existing);
  io::write_safetensors(dir + "/model.safetensors", ts);
}

void expect_load_error(const std::string& dir, const std::string& needle) {
  try {
    load_pretrained(dir);
    FAIL() << "expected a load error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(LlamaWeights, LoadErrorsNameTheTensor) {
  LlamaConfig c = tiny_config(2, false);
  LlamaModel model(c, ModelOptions{.seed = 1});
  const std::string good = (temp_dir() / "good").string();
  save_pretrained(*model, good);
  auto ck = io::SafetensorsCheckpoint::open(good);
  static float extra[4] = {};
  write_edited(
      good, (temp_dir() / "missing").string(),
      [](auto& ts) {
        std::erase_if(ts, [](const io::TensorSource& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
      },
      ck);
  expect_load_error((temp_dir() / "missing").string(), "model.layers.1.mlp.up_proj.weight [64, 32]");
  write_edited(
      good, (temp_dir() / "extra").string(),
      [](auto& ts) { ts.push_back(io::TensorSource::borrow("model.layers.7.foo", io::DType::kF32, {4}, extra)); }, ck);
  expect_load_error((temp_dir() / "extra").string(), "unexpected tensor 'model.layers.7.foo'");
  write_edited(
      good, (temp_dir() / "shape").string(),
      [](auto& ts) {
        for (auto& t : ts)
          if (t.name == "model.norm.weight") t.shape = {2, 16};
      },
      ck);
  expect_load_error((temp_dir() / "shape").string(),
                    "'model.norm.weight' has shape [2, 16] but the model expects [32]");
  write_edited(
      good, (temp_dir() / "dtype").string(),
      [](auto& ts) {
        for (auto& t : ts)
          if (t.name == "model.norm.weight") t.dtype = io::DType::kI32;
      },
      ck);
  expect_load_error((temp_dir() / "dtype").string(), "'model.norm.weight' has dtype I32");
}

// Embedding::accumulate_into_grad (set for untied tables): later micro-batches add their rows into the
// accumulated .grad in place. Reference: at::embedding under LibTorch's own autograd, where
// AccumulateGrad adds a dense [V, H] gradient; ids repeat, so rows sum several tokens. Exact equality
// is the contract (same per-row sums in token order, same elementwise add), so no tolerance.
TEST(LlamaModel, EmbeddingAccumulatesIntoGradBitForBit) {
  struct CountingHook : torch::autograd::PostAccumulateGradHook {
    int* calls;
    explicit CountingHook(int* c) : calls(c) {}
    void operator()(const torch::autograd::Variable&) override { ++*calls; }
  };
  torch::manual_seed(3);
  const int64_t vocab = 50, dim = 16;
  Embedding emb(vocab, dim, torch::TensorOptions());
  {
    torch::NoGradGuard no_grad;
    emb->weight.normal_();
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> micro;  // ids [2,12], upstream gradient [2,12,dim]
  for (int i = 0; i < 3; ++i)
    micro.emplace_back(torch::randint(0, vocab, {2, 12}, torch::kInt64), torch::randn({2, 12, dim}));
  torch::Tensor ref = emb->weight.detach().clone().requires_grad_(true);
  int ref_calls = 0, calls = 0, taken = 0;
  torch::autograd::impl::set_post_acc_grad_hooks(ref, std::make_unique<CountingHook>(&ref_calls));
  torch::autograd::impl::set_post_acc_grad_hooks(emb->weight, std::make_unique<CountingHook>(&calls));
  emb->accumulate_into_grad = true;
  {
    for (const auto& [ids, up] : micro) {
      (at::embedding(ref, ids) * up).sum().backward();
      const at::TensorImpl* before = emb->weight.grad().defined() ? emb->weight.grad().unsafeGetTensorImpl() : nullptr;
      torch::Tensor out = emb(ids);
      EXPECT_TRUE(torch::equal(out, at::embedding(ref, ids).detach()));
      (out * up).sum().backward();
      if (before != nullptr && emb->weight.grad().unsafeGetTensorImpl() != before) ++taken;
    }
  }
  EXPECT_TRUE(torch::equal(emb->weight.grad(), ref.grad()));
  EXPECT_EQ(calls, 3);  // hooks (the data-parallel reducer's) still see every gradient
  EXPECT_EQ(ref_calls, 3);
  EXPECT_EQ(taken, 2);

  // A whole untied model, three micro-batches: every gradient equals the run with the option off.
  LlamaConfig c = tiny_config();
  LlamaModel model(c, ModelOptions{.seed = 5});
  ASSERT_TRUE(model->embed_tokens->accumulate_into_grad);
  const auto grads = [&](bool in_place) {
    model->zero_grad();
    model->embed_tokens->accumulate_into_grad = in_place;
    for (int i = 0; i < 3; ++i) {
      torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 12}, torch::kInt64);
      next_token_loss(model->logits(model->forward(ids)), ids).backward();
    }
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  torch::manual_seed(9);
  const auto g0 = grads(false);
  torch::manual_seed(9);
  const auto g1 = grads(true);
  ASSERT_EQ(g0.size(), g1.size());
  for (size_t i = 0; i < g0.size(); ++i) EXPECT_TRUE(torch::equal(g0[i], g1[i])) << i;
  EXPECT_FALSE(LlamaModel(tiny_config(2, /*tied=*/true), ModelOptions{.seed = 5})->embed_tokens->accumulate_into_grad);
}

namespace {
// A stand-in LM head of a [V, H] weight: forward sum(0.5 * weight), backward a fresh dense [V, H] of 0.5
// whose buffer address it writes to *record (to see where autograd accumulates the tied gradient).
struct HeadProbe : torch::autograd::Function<HeadProbe> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& w, int64_t record) {
    ctx->saved_data["V"] = w.size(0);
    ctx->saved_data["H"] = w.size(1);
    ctx->saved_data["record"] = record;
    return (w * 0.5).sum();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    torch::Tensor g = torch::full({ctx->saved_data["V"].toInt(), ctx->saved_data["H"].toInt()}, 0.5);
    *reinterpret_cast<const void**>(ctx->saved_data["record"].toInt()) = g.data_ptr();
    return {g, torch::Tensor()};
  }
};
}  // namespace

// Embedding::tied_to_head (set for tied tables): the embedding's rows join the head's dense gradient in
// place. Reference: the same tied model with the flag off (LibTorch's dense embedding gradient, which
// autograd adds to the head's). Exact equality is the contract (same per-row sums, h + e per element),
// so no tolerance; three micro-batches cover .grad empty (first) and accumulating (later).
TEST(LlamaModel, TiedEmbeddingGradientJoinsTheHeadsInPlaceBitForBit) {
  LlamaConfig c = tiny_config(2, /*tied=*/true);
  LlamaModel model(c, ModelOptions{.seed = 5});
  ASSERT_TRUE(model->embed_tokens->tied_to_head);
  const auto grads = [&](bool tied_rows) {
    model->zero_grad();
    model->embed_tokens->tied_to_head = tied_rows;
    for (int i = 0; i < 3; ++i) {
      torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 12}, torch::kInt64);
      next_token_loss(model->logits(model->forward(ids)), ids).backward();
    }
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  torch::manual_seed(9);
  const auto g0 = grads(false);
  torch::manual_seed(9);
  const auto g1 = grads(true);
  ASSERT_EQ(g0.size(), g1.size());
  for (size_t i = 0; i < g0.size(); ++i) {
    EXPECT_FALSE(g1[i].is_sparse()) << i;
    EXPECT_TRUE(torch::equal(g0[i], g1[i])) << i;
  }
  EXPECT_FALSE(LlamaModel(tiny_config(), ModelOptions{.seed = 5})->embed_tokens->tied_to_head);

  // In place: with .grad empty, the weight's .grad is the very buffer the head's backward returned (no
  // second dense [V, H] was made), whichever of the two gradients autograd receives first.
  Embedding emb(7, 3, torch::TensorOptions());
  emb->tied_to_head = true;
  {
    torch::NoGradGuard no_grad;
    emb->weight.zero_();
  }
  const torch::Tensor ids = torch::tensor({1, 3, 3}, torch::kInt64).view({1, 3});
  for (bool head_first : {false, true}) {
    emb->weight.mutable_grad().reset();
    const void* head_buffer = nullptr;
    const auto record = static_cast<int64_t>(reinterpret_cast<intptr_t>(&head_buffer));
    torch::Tensor h, e;
    if (head_first) h = HeadProbe::apply(emb->as_head(), record);
    e = emb(ids).sum();
    if (!head_first) h = HeadProbe::apply(emb->as_head(), record);
    (e + h).backward();
    ASSERT_FALSE(emb->weight.grad().is_sparse());
    EXPECT_EQ(emb->weight.grad().data_ptr(), head_buffer) << head_first;
    // Rows 1 and 3 add their token counts (1 and 2) to the head's 0.5.
    const torch::Tensor want = torch::tensor({0.5, 1.5, 0.5, 2.5, 0.5, 0.5, 0.5}).unsqueeze(1).expand({7, 3});
    EXPECT_TRUE(torch::equal(emb->weight.grad(), want)) << emb->weight.grad();
  }
}
