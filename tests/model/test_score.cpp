// Scoring: log-probs agree with a direct forward, batching by length does not change results, and
// the JSONL contract (input order, len-1 log-probs, mean NLL, errors with line numbers).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/model/inference.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"
#include "sftgo/model/score.h"

using namespace sftgo;
using namespace sftgo::model;
namespace fs = std::filesystem;

namespace {
LlamaConfig small() {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.tie_word_embeddings = false;
  return c;
}
}  // namespace

TEST(Score, MatchesDirectForwardAndIsBatchInvariant) {
  LlamaModel model(small(), ModelOptions{.seed = 2});
  std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4, 5, 6, 7}, {9, 8}, {3}, {5, 5, 5, 1}, {}};
  auto a = score_logprobs(*model, seqs, /*max_batch_tokens=*/1000);
  auto b = score_logprobs(*model, seqs, /*max_batch_tokens=*/1);  // one sequence per batch
  ASSERT_EQ(a.size(), seqs.size());
  EXPECT_EQ(a[2].size(), 0u);
  EXPECT_EQ(a[4].size(), 0u);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < seqs.size(); ++i) {
    ASSERT_EQ(a[i].size(), seqs[i].empty() ? 0 : seqs[i].size() - 1);
    for (size_t t = 0; t < a[i].size(); ++t) EXPECT_NEAR(a[i][t], b[i][t], 1e-5);
    if (seqs[i].size() < 2) continue;
    torch::Tensor ids = torch::tensor(seqs[i], torch::kInt64).unsqueeze(0);
    torch::Tensor lp = torch::log_softmax(model->logits(model->forward(ids)), -1)[0];
    for (size_t t = 0; t + 1 < seqs[i].size(); ++t)
      EXPECT_NEAR(a[i][t], lp[static_cast<int64_t>(t)][seqs[i][t + 1]].item<double>(), 1e-5);
  }
}

TEST(Score, LmHeadBlocksGiveTheWholeTextsLogProbs) {
  // score runs the LM head and log-softmax over blocks of scored positions, never [T, V] at once;
  // blocks of 1, 3 and 5 rows (edges inside and across sequences, padding skipped) against the
  // whole-text log-softmax of a direct forward. 1e-5 (as the other Score tests): a GEMM of another
  // row count may sum in another order, a last-bit difference on log-probs of about -4.
  LlamaModel model(small(), ModelOptions{.seed = 3});
  std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {9, 8, 7}, {5, 5, 5, 1, 2}};
  torch::NoGradGuard no_grad;
  for (int64_t rows : {1, 3, 5}) {
    auto got = score_logprobs(*model, seqs, /*max_batch_tokens=*/1000, rows);
    for (size_t i = 0; i < seqs.size(); ++i) {
      torch::Tensor ids = torch::tensor(seqs[i], torch::kInt64).unsqueeze(0);
      torch::Tensor lp = torch::log_softmax(model->logits(model->forward(ids)), -1)[0];
      ASSERT_EQ(got[i].size(), seqs[i].size() - 1);
      for (size_t t = 0; t + 1 < seqs[i].size(); ++t)
        EXPECT_NEAR(got[i][t], lp[static_cast<int64_t>(t)][seqs[i][t + 1]].item<double>(), 1e-5) << rows;
    }
  }
}

TEST(Score, JsonlContract) {
  LlamaModel model(small(), ModelOptions{.seed = 4});
  fs::path dir = fs::temp_directory_path() / ("sftgo_test_score_" + std::to_string(::getpid()));
  save_pretrained(*model, dir.string());
  ScoreCliOptions opt;
  opt.model_dir = dir.string();
  std::istringstream in("{\"ids\": [1, 2, 3]}\n\n{\"ids\": [4, 5, 6, 7, 8]}\n{\"ids\": [9]}\n");
  std::ostringstream out;
  ScoreSummary s = run_score_cli(opt, in, out);
  EXPECT_EQ(s.sequences, 3);
  EXPECT_EQ(s.scored_tokens, 2 + 4);
  std::istringstream lines(out.str());
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(lines, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["ids"], nlohmann::json({1, 2, 3}));
  EXPECT_EQ(rows[0]["logprobs"].size(), 2u);
  EXPECT_EQ(rows[1]["logprobs"].size(), 4u);
  EXPECT_EQ(rows[2]["logprobs"].size(), 0u);
  double nll = 0;
  for (auto& r : rows)
    for (auto& v : r["logprobs"]) nll -= v.get<double>();
  EXPECT_NEAR(s.mean_nll, nll / 6, 1e-9);
  EXPECT_NEAR(s.perplexity, std::exp(nll / 6), 1e-9);
  // A random 64-token model is near uniform: perplexity ~ vocab size.
  EXPECT_GT(s.perplexity, 30);
  EXPECT_LT(s.perplexity, 130);

  std::istringstream bad("{\"ids\": [1, 2]}\n{\"ids\": [1, 999]}\n");
  try {
    run_score_cli(opt, bad, out);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kData);
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  std::istringstream text("{\"text\": \"hello\"}\n");
  EXPECT_THROW(run_score_cli(opt, text, out), Error);
  opt.encode = [](const std::string& t) { return std::vector<int64_t>(t.size(), 7); };
  std::istringstream text2("{\"text\": \"hello\"}\n");
  EXPECT_EQ(run_score_cli(opt, text2, out).scored_tokens, 4);
  std::system(("rm -rf '" + dir.string() + "'").c_str());  // not fs::remove_all: see io/safetensors.cpp
}

TEST(Inference, LoaderGivesTheSavedModelWithItsAdapterInEvalMode) {
  // A base model and an adapter whose B is non-zero (apply_lora starts B at zero, which would hide
  // a loader that skips the adapter), saved as score/generate/eval/lora-merge read them.
  LlamaModel model(small(), ModelOptions{.seed = 6});
  LoraOptions lo;
  lo.rank = 4;
  lo.dropout = 0.1;
  apply_lora(*model, lo, 3);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : lora_named_parameters(*model))
      if (name.find("lora_B") != std::string::npos) p.normal_(0.0, 0.5);
  }
  test_util::TempDir dir;
  save_pretrained(*model, dir.path() + "/base");
  save_lora_adapter(*model, dir.path() + "/adapter");

  InferenceLoadOptions base;
  base.model_dir = dir.path() + "/base";
  InferenceLoadOptions with_adapter = base;
  with_adapter.adapter_dir = dir.path() + "/adapter";
  LlamaModel plain = load_for_inference(base);
  LlamaModel adapted = load_for_inference(with_adapter);
  EXPECT_FALSE(has_lora(*plain));
  ASSERT_TRUE(has_lora(*adapted));
  EXPECT_FALSE(adapted->is_training());  // eval mode: no LoRA dropout, whatever the caller does
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({{1, 5, 9, 2, 7}}, torch::kInt64);
  // Exact: the same fp32 weights (read back bit for bit) through the same ops on the same CPU.
  EXPECT_TRUE(torch::equal(adapted->forward(ids), model->forward(ids)));
  EXPECT_FALSE(torch::equal(plain->forward(ids), model->forward(ids)));  // the adapter changes the output

  // Bad dtype/device are usage errors naming the option the caller says the value came from.
  InferenceLoadOptions bad_dtype = base, bad_device = base;
  bad_dtype.dtype = "float16";
  bad_dtype.dtype_option = "score: dtype";
  bad_device.device = "tpu";
  for (const auto& [o, needle] : {std::pair<InferenceLoadOptions, std::string>{bad_dtype, "score: dtype must be float32"},
                                  {bad_device, "--device 'tpu' is not a device"}}) {
    try {
      load_for_inference(o);
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUsage);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}
