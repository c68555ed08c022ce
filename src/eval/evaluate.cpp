// Scoring context/continuation pairs with the model, and the `eval` command's driver.
#include "sftgo/eval/evaluate.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::eval {

using nlohmann::json;
using torch::Tensor;

// ---- Tokenisation -------------------------------------------------------------------------------

std::optional<int32_t> tokenizer_prefix_id(const Tokenizer& tok) {
  json j;
  try {
    j = json::parse(read_file(tok.source_path()));
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kTokenizer, tok.source_path(), ": not valid JSON: ", e.what());
  }
  if (!j.contains("post_processor") || j["post_processor"].is_null()) return std::nullopt;
  std::vector<json> procs = {j["post_processor"]};
  if (procs[0].value("type", "") == "Sequence" && procs[0].contains("processors"))
    procs = procs[0]["processors"].get<std::vector<json>>();
  for (const auto& p : procs) {
    if (p.value("type", "") != "TemplateProcessing" || !p.contains("single") || !p["single"].is_array()) continue;
    const json& first = p["single"].empty() ? json() : p["single"][0];
    if (!first.is_object() || !first.contains("SpecialToken")) return std::nullopt;
    const std::string name = first["SpecialToken"].value("id", "");
    auto id = tok.token_to_id(name);
    SFTGO_CHECK(id.has_value(), ErrorKind::kTokenizer, tok.source_path(), ": post_processor names special token '",
                name, "' which is not in the vocabulary");
    return id;
  }
  return std::nullopt;
}

namespace {

std::vector<int64_t> encode_text(const Tokenizer& tok, const EncodeOptions& o, const std::string& s) {
  std::vector<int64_t> out;
  // HFLM.tok_encode: no special tokens when the text already starts with the prefix token's text.
  if (o.prefix_id && !starts_with(s, tok.token_bytes(*o.prefix_id))) out.push_back(*o.prefix_id);
  for (TokenId id : tok.encode(s)) out.push_back(id);
  return out;
}

}  // namespace

EncodedPair encode_pair(const Tokenizer& tok, const EncodeOptions& o, const std::string& context_in,
                        const std::string& continuation_in) {
  EncodedPair p;
  if (context_in.empty()) {
    // HFLM.loglikelihood: the prefix token stands for an empty context.
    for (TokenId id : tok.encode(continuation_in)) p.continuation.push_back(id);
    SFTGO_CHECK(!p.continuation.empty(), ErrorKind::kData, "eval: empty context and empty continuation");
    if (p.continuation[0] != o.empty_context_id) {
      p.context = {o.empty_context_id};
    } else {
      p.context = {p.continuation[0]};
      p.continuation.erase(p.continuation.begin());
    }
    return p;
  }
  std::string context = context_in, continuation = continuation_in;
  size_t keep = context.size();
  while (keep > 0 && std::isspace(static_cast<unsigned char>(context[keep - 1]))) --keep;
  continuation = context.substr(keep) + continuation;
  context.resize(keep);
  std::vector<int64_t> whole = encode_text(tok, o, context + continuation);
  p.context = encode_text(tok, o, context);
  SFTGO_CHECK(p.context.size() < whole.size(), ErrorKind::kData, "eval: the continuation '", excerpt(continuation),
              "' encodes to no tokens of its own");
  p.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(p.context.size()), whole.end());
  return p;
}

// ---- Scoring ----------------------------------------------------------------------------------------

namespace {

// hidden [T,H] (final-normed states that predict `targets`) -> per-row log p(target) and whether
// the target is the argmax. Logits for at most kRows rows at a time: [rows,V] stays small even for
// a 128k vocabulary.
void score_rows(model::LlamaModelImpl& model, const Tensor& hidden, const std::vector<int64_t>& targets,
                std::vector<double>& lp, std::vector<uint8_t>& greedy) {
  constexpr int64_t kRows = 1024;
  const auto total = static_cast<int64_t>(targets.size());
  SFTGO_CHECK(hidden.size(0) == total, ErrorKind::kInternal, "eval: ", hidden.size(0), " rows for ", total, " targets");
  lp.assign(targets.size(), 0.0);
  greedy.assign(targets.size(), 0);
  Tensor tgt = torch::tensor(targets, torch::kInt64).to(hidden.device());  // [T]
  for (int64_t s = 0; s < total; s += kRows) {
    const int64_t e = std::min(total, s + kRows);
    Tensor logits = model.logits(hidden.slice(0, s, e).unsqueeze(0)).squeeze(0);  // [r,V]
    Tensor logp = torch::log_softmax(logits.to(torch::kFloat), -1);               // [r,V]
    Tensor t = tgt.slice(0, s, e);
    Tensor tok_lp = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1).to(torch::kCPU, torch::kDouble);
    Tensor is_max = (logp.argmax(-1) == t).to(torch::kCPU, torch::kUInt8);
    std::copy_n(tok_lp.contiguous().data_ptr<double>(), e - s, lp.begin() + s);
    std::copy_n(is_max.contiguous().data_ptr<uint8_t>(), e - s, greedy.begin() + s);
  }
}

// Sums each request's continuation log-probs (consecutive in lp/greedy, requests in `order`) into
// its result. Summed in double; HFLM sums the fp32 values in fp32 (the difference grows with |ll|).
void add_continuations(const std::vector<size_t>& order, const std::vector<EncodedPair>& pairs,
                       const std::vector<double>& lp, const std::vector<uint8_t>& greedy,
                       std::vector<LoglikResult>& result) {
  size_t k = 0;
  for (size_t i : order) {
    LoglikResult& r = result[i];
    r.is_greedy = true;
    for (size_t t = 0; t < pairs[i].continuation.size(); ++t, ++k) {
      r.loglik += lp[k];
      r.is_greedy = r.is_greedy && greedy[k] != 0;
    }
  }
}

}  // namespace

std::vector<LoglikResult> loglikelihood(model::LlamaModelImpl& model, const std::vector<EncodedPair>& pairs,
                                        int64_t max_length, int64_t max_batch_tokens, int64_t max_batch) {
  torch::NoGradGuard no_grad;
  const auto dev = model.device();
  std::vector<LoglikResult> result(pairs.size());
  // The model input: (context + continuation)[-(max_length + 1):][:-1], as HFLM.
  std::vector<std::vector<int64_t>> inputs(pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    SFTGO_CHECK(!p.context.empty() && !p.continuation.empty(), ErrorKind::kInternal, "eval: empty request");
    SFTGO_CHECK(static_cast<int64_t>(p.continuation.size()) <= max_length, ErrorKind::kData, "eval: a continuation of ",
                p.continuation.size(), " tokens exceeds the model's max length ", max_length);
    std::vector<int64_t> all = p.context;
    all.insert(all.end(), p.continuation.begin(), p.continuation.end());
    const size_t start = all.size() > static_cast<size_t>(max_length + 1) ? all.size() - (max_length + 1) : 0;
    inputs[i].assign(all.begin() + static_cast<std::ptrdiff_t>(start), all.end() - 1);
  }
  std::vector<size_t> order(pairs.size());
  std::iota(order.begin(), order.end(), 0);
  // Longest first: each batch pads little and the first batch shows the peak memory at once.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return inputs[a].size() > inputs[b].size(); });
  size_t next = 0;
  while (next < order.size()) {
    const auto len = static_cast<int64_t>(inputs[order[next]].size());
    const int64_t rows = std::clamp<int64_t>(max_batch_tokens / std::max<int64_t>(len, 1), 1, max_batch);
    std::vector<size_t> members;
    for (; next < order.size() && static_cast<int64_t>(members.size()) < rows; ++next) members.push_back(order[next]);
    const auto b = static_cast<int64_t>(members.size());
    Tensor ids = torch::zeros({b, len}, torch::kInt64);  // [b,len], right padding (causal: harmless)
    std::vector<int64_t> flat_pos, targets;              // continuation positions in [b*len]
    for (int64_t m = 0; m < b; ++m) {
      const auto& in = inputs[members[m]];
      const auto& cont = pairs[members[m]].continuation;
      ids[m].slice(0, 0, static_cast<int64_t>(in.size())).copy_(torch::tensor(in, torch::kInt64));
      const int64_t inplen = static_cast<int64_t>(in.size()), contlen = static_cast<int64_t>(cont.size());
      for (int64_t t = 0; t < contlen; ++t) {
        flat_pos.push_back(m * len + inplen - contlen + t);
        targets.push_back(cont[t]);
      }
    }
    Tensor hidden = model.forward(ids.to(dev));  // [b,len,H]
    Tensor picked = hidden.reshape({b * len, -1}).index_select(0, torch::tensor(flat_pos, torch::kInt64).to(dev));
    std::vector<double> lp;
    std::vector<uint8_t> greedy;
    score_rows(model, picked, targets, lp, greedy);
    add_continuations(members, pairs, lp, greedy, result);
  }
  return result;
}

std::vector<LoglikResult> loglikelihood_shared_context(model::LlamaModelImpl& model,
                                                       const std::vector<EncodedPair>& pairs,
                                                       const std::vector<std::vector<size_t>>& groups,
                                                       int64_t max_length, int64_t max_batch_tokens,
                                                       int64_t max_batch) {
  torch::NoGradGuard no_grad;
  const auto dev = model.device();
  const auto opts = torch::TensorOptions().dtype(model.dtype()).device(dev);
  std::vector<LoglikResult> result(pairs.size());
  std::vector<size_t> rest;                        // requests for the plain path
  std::vector<const std::vector<size_t>*> single;  // groups whose continuations are all one token
  for (const auto& g : groups) {
    if (g.empty()) continue;
    const auto& ctx = pairs[g[0]].context;
    size_t maxl = 0;
    bool ok = !ctx.empty();
    for (size_t i : g) {
      ok = ok && pairs[i].context == ctx && !pairs[i].continuation.empty();
      maxl = std::max(maxl, pairs[i].continuation.size());
    }
    // HFLM truncates when context + continuation exceeds max_length + 1: keep its exact window.
    ok = ok && static_cast<int64_t>(ctx.size() + maxl) <= max_length + 1;
    if (!ok) {
      rest.insert(rest.end(), g.begin(), g.end());
      continue;
    }
    if (maxl == 1) {
      single.push_back(&g);
      continue;
    }
    const auto c = static_cast<int64_t>(ctx.size()), n = static_cast<int64_t>(g.size());
    const auto steps = static_cast<int64_t>(maxl) - 1;  // continuation tokens that are model inputs
    model::KVCache cache = model::KVCache::create(model.config(), 1, c, opts);
    Tensor hc = model.forward_cached(torch::tensor(ctx, torch::kInt64).unsqueeze(0).to(dev), cache);  // [1,c,H]
    Tensor last = hc[0][c - 1].unsqueeze(0);                                                          // [1,H]
    Tensor hn;                                                                                        // [n,steps,H]
    if (steps > 0) {
      // The context's keys/values, repeated for the n continuations, then the continuations on top.
      model::KVCache big;
      big.capacity = c + steps;
      big.length = c;
      for (size_t l = 0; l < cache.k.size(); ++l) {
        auto grow = [&](const Tensor& t) {  // [1,kv,c,hd] -> [n,kv,c+steps,hd]
          Tensor out = torch::zeros({n, t.size(1), c + steps, t.size(3)}, opts);
          out.slice(2, 0, c).copy_(t.expand({n, -1, -1, -1}));
          return out;
        };
        big.k.push_back(grow(cache.k[l]));
        big.v.push_back(grow(cache.v[l]));
      }
      Tensor ids = torch::zeros({n, steps}, torch::kInt64);  // [n,steps], right padding
      for (int64_t m = 0; m < n; ++m) {
        const auto& cont = pairs[g[m]].continuation;
        const auto k = static_cast<int64_t>(cont.size()) - 1;
        if (k > 0) ids[m].slice(0, 0, k).copy_(torch::tensor(std::vector<int64_t>(cont.begin(), cont.end() - 1)));
      }
      hn = model.forward_cached(ids.to(dev), big);
    }
    std::vector<Tensor> rows;
    std::vector<int64_t> targets;
    for (int64_t m = 0; m < n; ++m) {
      const auto& cont = pairs[g[m]].continuation;
      rows.push_back(last);  // the last context position predicts the first continuation token
      if (cont.size() > 1) rows.push_back(hn[m].slice(0, 0, static_cast<int64_t>(cont.size()) - 1));
      targets.insert(targets.end(), cont.begin(), cont.end());
    }
    std::vector<double> lp;
    std::vector<uint8_t> greedy;
    score_rows(model, torch::cat(rows, 0), targets, lp, greedy);
    add_continuations(g, pairs, lp, greedy, result);
  }
  // One-token continuations (MMLU's " A".." D"): only the context's last hidden state matters, so
  // contexts of many documents share one right-padded forward, longest first (as lm_eval's
  // one-token logits cache, but batched across documents).
  std::stable_sort(single.begin(), single.end(), [&](const auto* a, const auto* b) {
    return pairs[a->front()].context.size() > pairs[b->front()].context.size();
  });
  for (size_t next = 0; next < single.size();) {
    const auto len = static_cast<int64_t>(pairs[single[next]->front()].context.size());
    const int64_t rows = std::clamp<int64_t>(max_batch_tokens / len, 1, max_batch);
    std::vector<const std::vector<size_t>*> members;
    for (; next < single.size() && static_cast<int64_t>(members.size()) < rows; ++next) members.push_back(single[next]);
    const auto b = static_cast<int64_t>(members.size());
    Tensor ids = torch::zeros({b, len}, torch::kInt64);  // [b,len], right padding
    std::vector<int64_t> flat_pos, targets;
    for (int64_t m = 0; m < b; ++m) {
      const auto& ctx = pairs[members[m]->front()].context;
      ids[m].slice(0, 0, static_cast<int64_t>(ctx.size())).copy_(torch::tensor(ctx, torch::kInt64));
      for (size_t i : *members[m]) {
        flat_pos.push_back(m * len + static_cast<int64_t>(ctx.size()) - 1);
        targets.push_back(pairs[i].continuation[0]);
      }
    }
    Tensor hidden = model.forward(ids.to(dev));  // [b,len,H]
    Tensor picked = hidden.reshape({b * len, -1}).index_select(0, torch::tensor(flat_pos, torch::kInt64).to(dev));
    std::vector<double> lp;
    std::vector<uint8_t> greedy;
    score_rows(model, picked, targets, lp, greedy);
    size_t k = 0;
    for (const auto* g : members)
      for (size_t i : *g) {
        result[i] = {lp[k], greedy[k] != 0};
        ++k;
      }
  }
  if (!rest.empty()) {
    std::vector<EncodedPair> sub;
    for (size_t i : rest) sub.push_back(pairs[i]);
    auto r = loglikelihood(model, sub, max_length, max_batch_tokens, max_batch);
    for (size_t j = 0; j < rest.size(); ++j) result[rest[j]] = r[j];
  }
  return result;
}

// ---- The command ------------------------------------------------------------------------------------

namespace {

json metric_json(const MetricValue& v) {
  json j;
  j["value"] = std::isnan(v.value) ? json() : json(v.value);
  j["stderr"] = std::isnan(v.stderr_) ? json() : json(v.stderr_);
  return j;
}

}  // namespace

TaskResult run_eval(const EvalOptions& o) {
  const TaskInfo& task = find_task(o.task);
  SFTGO_CHECK(o.shots >= 0, ErrorKind::kUsage, "--shots must be >= 0, got ", o.shots);
  SFTGO_CHECK(o.shots == 0 || task.allows_fewshot, ErrorKind::kUsage, task.name,
              " carries lm_eval's fixed 6-shot QA primer (num_fewshot 0); run it with --shots 0");
  SFTGO_CHECK(o.max_batch_tokens > 0 && o.batch_size > 0, ErrorKind::kUsage,
              "--max-batch-tokens and --batch-size must be positive");
  std::vector<Doc> all_docs = read_task_file(task, o.data_path);
  std::vector<Doc> pool_own;
  const bool own_pool = o.fewshot_path.empty() || o.fewshot_path == o.data_path;
  if (o.shots > 0 && !own_pool) pool_own = read_task_file(task, o.fewshot_path);
  const std::vector<Doc>& pool = own_pool ? all_docs : pool_own;
  const size_t n_docs = o.limit >= 0 ? std::min(all_docs.size(), static_cast<size_t>(o.limit)) : all_docs.size();
  SFTGO_CHECK(n_docs > 0, ErrorKind::kUsage, "--limit ", o.limit, " leaves no documents");

  Tokenizer tok = Tokenizer::load(o.tokenizer_path.empty() ? o.model_dir : o.tokenizer_path);
  EncodeOptions enc;
  enc.prefix_id = tokenizer_prefix_id(tok);
  auto bos = tok.bos_id();
  auto eos = tok.eos_id();
  SFTGO_CHECK(bos || eos, ErrorKind::kTokenizer, tok.source_path(), ": needs a BOS or EOS token for empty contexts");
  enc.empty_context_id = bos ? *bos : *eos;

  std::vector<std::string> contexts(n_docs);
  std::vector<EncodedPair> pairs;
  std::vector<size_t> first_pair(n_docs);
  for (size_t d = 0; d < n_docs; ++d) {
    const Doc& doc = all_docs[d];
    contexts[d] = build_context(task, doc, pick_fewshot(task, doc, pool, o.shots, own_pool));
    first_pair[d] = pairs.size();
    for (const auto& c : doc.choices) pairs.push_back(encode_pair(tok, enc, contexts[d], " " + c));
  }

  model::ModelOptions mo;
  mo.dtype = parse_dtype(o.dtype, "--dtype", ErrorKind::kUsage);
  mo.device = parse_device(o.device, "--device", ErrorKind::kUsage);
  mo.init_weights = false;
  model::LlamaModel m = model::load_pretrained(o.model_dir, mo);
  if (!o.adapter_dir.empty()) model::load_lora_adapter(*m, o.adapter_dir);
  m->eval();
  const int64_t vocab = m->config().vocab_size;
  for (const auto& p : pairs)
    for (const auto* v : {&p.context, &p.continuation})
      for (int64_t id : *v)
        SFTGO_CHECK(id >= 0 && id < vocab, ErrorKind::kData, "eval: token id ", id, " from ", tok.source_path(),
                    " is outside the model vocabulary [0, ", vocab, ")");
  log_info("eval {}: {} documents, {} requests, {}-shot, device {}", task.name, n_docs, pairs.size(), o.shots,
           mo.device.str());
  const int64_t max_length = o.max_length > 0 ? o.max_length : m->config().max_position_embeddings;
  std::vector<LoglikResult> ll;
  if (o.share_context) {
    std::vector<std::vector<size_t>> groups(n_docs);
    for (size_t d = 0; d < n_docs; ++d)
      for (size_t c = 0; c < all_docs[d].choices.size(); ++c) groups[d].push_back(first_pair[d] + c);
    ll = loglikelihood_shared_context(*m, pairs, groups, max_length, o.max_batch_tokens, o.batch_size);
  } else {
    ll = loglikelihood(*m, pairs, max_length, o.max_batch_tokens, o.batch_size);
  }

  TaskResult r;
  r.task = task.name;
  r.shots = o.shots;
  r.docs = static_cast<int64_t>(n_docs);
  std::map<std::string, std::vector<double>> per_metric;
  std::map<std::string, std::vector<double>> per_subject;
  // The one output rule (sftgo/core/files.h): checked writes, the OS reason on failure, atomic replace.
  std::unique_ptr<OutputStream> samples;
  if (!o.samples_path.empty()) samples = std::make_unique<OutputStream>(o.samples_path);
  for (size_t d = 0; d < n_docs; ++d) {
    const Doc& doc = all_docs[d];
    std::vector<double> lls;
    std::vector<bool> greedy;
    for (size_t c = 0; c < doc.choices.size(); ++c) {
      lls.push_back(ll[first_pair[d] + c].loglik);
      const bool bad = !std::isfinite(lls.back());
      r.non_finite_logliks += bad;
      if (bad && r.first_non_finite_doc < 0) r.first_non_finite_doc = static_cast<int64_t>(d);
      greedy.push_back(ll[first_pair[d] + c].is_greedy);
    }
    auto dm = doc_metrics(task, doc, lls);
    for (const auto& name : task.metrics) per_metric[name].push_back(dm.at(name));
    if (task.kind == TaskKind::kMmlu) per_subject[doc.subject].push_back(dm.at("acc"));
    if (samples) {
      json s = {{"doc", d},         {"source", doc.source},  {"context", contexts[d]}, {"choices", doc.choices},
                {"gold", doc.gold}, {"loglikelihoods", lls}, {"is_greedy", greedy},    {"metrics", dm}};
      *samples << s.dump() << "\n";
    }
  }
  if (samples) samples->finish();
  for (const auto& [name, values] : per_metric) r.metrics[name] = mean_with_stderr(values);
  if (task.kind == TaskKind::kMmlu) {
    // lm_eval groups: subject -> category -> mmlu, each a size-weighted mean with pooled stderr.
    std::map<std::string, std::vector<std::pair<int64_t, MetricValue>>> by_cat;
    for (const auto& [subject, values] : per_subject) {
      MetricValue v = mean_with_stderr(values);
      const auto n = static_cast<int64_t>(values.size());
      r.groups["mmlu_" + subject] = {n, v};
      by_cat[mmlu_category(subject)].push_back({n, v});
    }
    std::vector<double> cat_se;
    std::vector<int64_t> cat_n;
    for (const auto& [cat, members] : by_cat) {
      std::vector<double> se;
      std::vector<int64_t> sizes;
      double sum = 0.0;
      int64_t n = 0;
      for (const auto& [size, v] : members) {
        se.push_back(v.stderr_);
        sizes.push_back(size);
        sum += v.value * static_cast<double>(size);
        n += size;
      }
      MetricValue cv{sum / static_cast<double>(n), pooled_stderr(se, sizes)};
      r.groups["mmlu_" + cat] = {n, cv};
      cat_se.push_back(cv.stderr_);
      cat_n.push_back(n);
    }
    r.metrics["acc"].stderr_ = pooled_stderr(cat_se, cat_n);
  }
  return r;
}

std::string result_json(const TaskResult& r, const EvalOptions& o) {
  json j;
  j["task"] = r.task;
  j["num_fewshot"] = r.shots;
  j["docs"] = r.docs;
  j["model"] = o.model_dir;
  if (!o.adapter_dir.empty()) j["adapter"] = o.adapter_dir;
  j["data"] = o.data_path;
  j["fewshot_data"] = o.shots > 0 ? (o.fewshot_path.empty() ? o.data_path : o.fewshot_path) : "";
  j["limit"] = o.limit;
  j["dtype"] = o.dtype;
  for (const auto& [name, v] : r.metrics) j["metrics"][name] = metric_json(v);
  j["non_finite_loglikelihoods"] = r.non_finite_logliks;  // > 0: the model is damaged, metrics mean nothing
  for (const auto& [name, g] : r.groups) {
    json gj = metric_json(g.second);
    gj["docs"] = g.first;
    j["groups"][name] = gj;
  }
  return j.dump(2) + "\n";
}

std::string result_table(const TaskResult& r) {
  std::ostringstream os;
  os << "| task | shots | docs | metric | value | stderr |\n|---|---|---|---|---|---|\n";
  auto row = [&](const std::string& task, int64_t docs, const std::string& metric, const MetricValue& v) {
    os << "| " << task << " | " << r.shots << " | " << docs << " | " << metric << " | "
       << sftgo::format("{:.4f}", v.value) << " | "
       << (std::isnan(v.stderr_) ? std::string("N/A") : sftgo::format("{:.4f}", v.stderr_)) << " |\n";
  };
  for (const auto& [name, v] : r.metrics) row(r.task, r.docs, name, v);
  for (const auto& [name, g] : r.groups)
    if (name == "mmlu_stem" || name == "mmlu_humanities" || name == "mmlu_social_sciences" || name == "mmlu_other")
      row(" - " + name, g.first, "acc", g.second);
  return os.str();
}

}  // namespace sftgo::eval
