// Loading for inference, generation (KV cache, greedy / temperature / top-p) and scoring (per-token
// log-probs).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <istream>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <ostream>

#include "sftgo/core/error.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/generate.h"
#include "sftgo/model/inference.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"
#include "sftgo/model/score.h"

namespace sftgo::model {

using torch::Tensor;

// ---- Loading -----------------------------------------------------------------------------------

LlamaModel load_for_inference(const InferenceLoadOptions& o) {
  ModelOptions mo;
  mo.dtype = parse_dtype(o.dtype, o.dtype_option, ErrorKind::kUsage);
  mo.device = parse_device(o.device, o.device_option, ErrorKind::kUsage);
  mo.init_weights = false;  // every parameter is overwritten by the checkpoint
  LlamaModel model = load_pretrained(o.model_dir, mo);
  if (!o.adapter_dir.empty()) load_lora_adapter(*model, o.adapter_dir);
  model->eval();
  return model;
}

// ---- Generation --------------------------------------------------------------------------------

namespace {

// logits [V] (fp32, disallowed ids already -inf) -> next token.
int64_t pick_token(const Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature <= 0.0) return logits.argmax().item<int64_t>();
  Tensor probs = torch::softmax(logits / o.temperature, -1);
  if (o.top_p < 1.0) {
    // Keep the smallest prefix of the sorted distribution whose mass reaches top_p (the top token
    // always survives), then renormalise.
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    Tensor before = sorted.cumsum(-1) - sorted;  // mass strictly before each token
    sorted.masked_fill_(before >= o.top_p, 0.0);
    probs = torch::zeros_like(probs).scatter_(-1, idx, sorted);
  }
  return at::multinomial(probs, 1, false, gen).item<int64_t>();
}

}  // namespace

int64_t max_new_tokens_bound(const LlamaModelImpl& model, int64_t prompt_tokens) {
  return std::max<int64_t>(0, model.config().max_position_embeddings - prompt_tokens);
}

std::vector<int64_t> generate(LlamaModelImpl& model, const std::vector<int64_t>& prompt, const GenerateOptions& o) {
  SFTGO_CHECK(!prompt.empty(), ErrorKind::kUsage, "generate: the prompt is empty");
  SFTGO_CHECK(std::isfinite(o.temperature) && o.temperature >= 0.0, ErrorKind::kUsage,
              "generate: temperature must be a finite number >= 0 (0 = greedy), got ", o.temperature);
  SFTGO_CHECK(std::isfinite(o.top_p) && o.top_p > 0.0 && o.top_p <= 1.0, ErrorKind::kUsage,
              "generate: top_p must be in (0, 1], got ", o.top_p);
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t bound = max_new_tokens_bound(model, prompt_len);
  // The KV cache is sized prompt + max_new_tokens up front, and RoPE is only defined up to
  // max_position_embeddings, so that is the ceiling.
  SFTGO_CHECK(o.max_new_tokens >= 0 && o.max_new_tokens <= bound, ErrorKind::kUsage,
              "generate: max_new_tokens = ", o.max_new_tokens, " is out of range (expected 0..", bound,
              ": the prompt's ", prompt_len,
              " tokens plus the new ones must fit max_position_embeddings = ", model.config().max_position_embeddings,
              ")");
  const int64_t vocab = model.config().vocab_size;
  for (int64_t id : prompt)
    SFTGO_CHECK(id >= 0 && id < vocab, ErrorKind::kUsage, "generate: prompt token id ", id,
                " is outside the model's vocabulary [0, ", vocab, ")");
  torch::NoGradGuard no_grad;
  // -inf at every id the caller does not allow (and past the allowed list).
  std::optional<Tensor> blocked;  // [V] bool
  if (!o.allowed.empty()) {
    Tensor ok = torch::zeros({vocab}, torch::kBool);
    const int64_t n = std::min<int64_t>(vocab, static_cast<int64_t>(o.allowed.size()));
    auto acc = ok.accessor<bool, 1>();
    for (int64_t i = 0; i < n; ++i) acc[i] = o.allowed[static_cast<size_t>(i)] != 0;
    SFTGO_CHECK(ok.any().item<bool>(), ErrorKind::kUsage, "generate: no token id is allowed");
    blocked = ok.logical_not();
  }
  const auto dev = model.device();
  const int64_t total = prompt_len + o.max_new_tokens;
  KVCache cache = KVCache::create(model.config(), 1, total, torch::TensorOptions().dtype(model.dtype()).device(dev));
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  Tensor ids = torch::tensor(prompt, torch::kInt64).unsqueeze(0).to(dev);  // [1,P]
  std::vector<int64_t> out;
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    Tensor h = model.forward_cached(ids, cache);                                              // [1,T,H]
    Tensor logits = model.logits(h.select(1, -1)).squeeze(0).to(torch::kCPU, torch::kFloat);  // [V]
    SFTGO_CHECK(logits.isfinite().all().item<bool>(), ErrorKind::kModel, "generate: the model's logits at new token ",
                step + 1, " are not finite (NaN or Inf): its weights are probably damaged");
    if (blocked) logits.masked_fill_(*blocked, -std::numeric_limits<float>::infinity());
    int64_t next = pick_token(logits, o, gen);
    out.push_back(next);
    if (o.on_token) o.on_token(next);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) break;
    ids = torch::full({1, 1}, next, torch::TensorOptions().dtype(torch::kInt64).device(dev));
  }
  return out;
}

// ---- Scoring -----------------------------------------------------------------------------------

namespace {

// Rows of the LM head per block: about 512 MiB of fp32 logits (1046 rows at the Llama-3
// vocabulary) plus as much for their log-softmax, instead of [T, V] twice for the whole text
// (4.6 GB each at 9,000 tokens). Narrower blocks cost CPU: each GEMM reads the whole [V, H] head
// again (261-row blocks took ~35% more CPU than one GEMM at T = 4,500, 1,024-row blocks ~8%). The
// rows are split evenly over the blocks, so none has fewer than half the target (>= 256 rows): below
// ~224 rows the CPU GEMM takes another kernel that rounds the last bit differently (2.6e-6 on logits
// at the Llama-3.2-1B shape, 2-8 threads); from 224 on every row equals the whole-text GEMM, and
// scores stay bit-identical to the unblocked computation.
constexpr int64_t kScoreBlockElements = int64_t{128} << 20;
constexpr int64_t kScoreMinBlockRows = 512;

// hidden [N, H] (the positions that predict a token), targets [N] int64 on hidden's device ->
// log p(target) [N] fp64 on the CPU, block by block over N. Each row's logits, log-softmax and
// gather are those of the whole-text computation (rows are independent).
Tensor target_logprobs(LlamaModelImpl& model, const Tensor& hidden, const Tensor& targets, int64_t rows) {
  const int64_t n = hidden.size(0);
  if (rows <= 0) rows = std::max(kScoreMinBlockRows, kScoreBlockElements / model.config().vocab_size);
  const int64_t blocks = (n + rows - 1) / rows;
  const int64_t per_block = blocks > 0 ? (n + blocks - 1) / blocks : 0;  // even split, <= rows
  Tensor out = torch::empty({n}, torch::kDouble);
  for (int64_t r0 = 0; r0 < n; r0 += per_block) {
    const int64_t r1 = std::min(n, r0 + per_block);
    Tensor logits = model.logits(hidden.slice(0, r0, r1)).to(torch::kFloat);  // [r,V]
    Tensor logp = torch::log_softmax(logits, -1);                               // [r,V]
    out.slice(0, r0, r1).copy_(logp.gather(-1, targets.slice(0, r0, r1).unsqueeze(-1)).squeeze(-1).to(torch::kCPU));
  }
  return out;
}

}  // namespace

std::vector<std::vector<double>> score_logprobs(LlamaModelImpl& model, const std::vector<std::vector<int64_t>>& seqs,
                                                int64_t max_batch_tokens, int64_t head_block_rows) {
  torch::NoGradGuard no_grad;
  const auto dev = model.device();
  std::vector<std::vector<double>> result(seqs.size());
  // Longest first so each batch pads little; right padding is harmless under a causal mask.
  std::vector<size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].size() > seqs[b].size(); });
  size_t i = 0;
  while (i < order.size()) {
    const int64_t len = static_cast<int64_t>(seqs[order[i]].size());
    if (len < 2) {  // nothing to score
      ++i;
      continue;
    }
    const int64_t batch = std::max<int64_t>(1, max_batch_tokens / len);
    std::vector<size_t> members;
    for (; i < order.size() && static_cast<int64_t>(members.size()) < batch && seqs[order[i]].size() >= 2; ++i)
      members.push_back(order[i]);
    Tensor ids = torch::zeros({static_cast<int64_t>(members.size()), len}, torch::kInt64);  // [b,len]
    // The scored positions, flattened: member m's positions 0..n_m-2 predict its tokens 1..n_m-1.
    std::vector<int64_t> rows, targets;
    for (size_t m = 0; m < members.size(); ++m) {
      const auto& s = seqs[members[m]];
      ids[static_cast<int64_t>(m)].slice(0, 0, static_cast<int64_t>(s.size())).copy_(torch::tensor(s, torch::kInt64));
      for (size_t t = 0; t + 1 < s.size(); ++t) {
        rows.push_back(static_cast<int64_t>(m) * len + static_cast<int64_t>(t));
        targets.push_back(s[t + 1]);
      }
    }
    Tensor hidden = model.forward(ids.to(dev));                                         // [b,len,H]
    hidden = hidden.reshape({-1, hidden.size(-1)}).index_select(0, torch::tensor(rows).to(dev));  // [N,H]
    const Tensor tok = target_logprobs(model, hidden, torch::tensor(targets).to(dev), head_block_rows);  // [N] fp64
    const double* p = tok.data_ptr<double>();
    for (size_t m = 0; m < members.size(); ++m) {
      const size_t n = seqs[members[m]].size() - 1;
      result[members[m]].assign(p, p + n);
      p += n;
    }
  }
  return result;
}

ScoreSummary run_score_cli(const ScoreCliOptions& options, std::istream& in, std::ostream& out) {
  LlamaModel model = load_for_inference({.model_dir = options.model_dir,
                                          .adapter_dir = options.adapter_dir,
                                          .dtype = options.dtype,
                                          .device = options.device,
                                          .dtype_option = "score: dtype",
                                          .device_option = "score: device"});

  std::vector<std::vector<int64_t>> seqs;
  std::string line;
  int64_t line_no = 0;
  const int64_t vocab = model->config().vocab_size;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      SFTGO_FAIL(ErrorKind::kData, "score input line ", line_no, ": not valid JSON: ", e.what());
    }
    std::vector<int64_t> ids;
    if (j.is_object() && j.contains("ids")) {
      SFTGO_CHECK(j["ids"].is_array(), ErrorKind::kData, "score input line ", line_no, ": \"ids\" must be an array");
      for (const auto& v : j["ids"]) {
        SFTGO_CHECK(v.is_number_integer(), ErrorKind::kData, "score input line ", line_no,
                    ": \"ids\" must hold integers");
        ids.push_back(v.get<int64_t>());
      }
    } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
      SFTGO_CHECK_HINT(static_cast<bool>(options.encode), ErrorKind::kData, "pass a tokenizer to score text",
                       "score input line ", line_no, ": {\"text\": ...} needs a tokenizer");
      ids = options.encode(j["text"].get<std::string>());
    } else {
      SFTGO_FAIL(ErrorKind::kData, "score input line ", line_no, ": expected {\"ids\": [...]} or {\"text\": \"...\"}");
    }
    for (int64_t id : ids)
      SFTGO_CHECK(id >= 0 && id < vocab, ErrorKind::kData, "score input line ", line_no, ": token id ", id,
                  " outside the vocabulary [0, ", vocab, ")");
    SFTGO_CHECK(static_cast<int64_t>(ids.size()) <= model->config().max_position_embeddings, ErrorKind::kData,
                "score input line ", line_no, ": ", ids.size(), " tokens exceed max_position_embeddings ",
                model->config().max_position_embeddings);
    seqs.push_back(std::move(ids));
  }
  auto logprobs = score_logprobs(*model, seqs, options.max_batch_tokens);
  ScoreSummary summary;
  double nll = 0.0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    nlohmann::json line{{"ids", seqs[i]}, {"logprobs", logprobs[i]}};  // NaN/Inf are written as null
    int64_t bad = 0;
    for (double lp : logprobs[i]) bad += !std::isfinite(lp);
    if (bad > 0) line["non_finite"] = true;
    summary.non_finite_tokens += bad;
    out << line.dump() << "\n";
    for (double lp : logprobs[i]) nll -= lp;
    summary.scored_tokens += static_cast<int64_t>(logprobs[i].size());
  }
  summary.sequences = static_cast<int64_t>(seqs.size());
  summary.mean_nll = summary.scored_tokens ? nll / static_cast<double>(summary.scored_tokens) : 0.0;
  summary.perplexity = std::exp(summary.mean_nll);
  return summary;
}

}  // namespace sftgo::model
