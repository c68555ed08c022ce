// Tokenising and scoring context/continuation pairs with the model (the driver is in run.cpp).
#include "sftgo/eval/evaluate.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/model/llama.h"
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

namespace {

// The context's KV cache [1,kv,c,hd] per layer, repeated for n continuations with room for `steps`
// more positions each: [n,kv,c+steps,hd].
model::KVCache repeat_cache(const model::KVCache& cache, int64_t n, int64_t steps, const torch::TensorOptions& opts) {
  const int64_t c = cache.length;
  model::KVCache big;
  big.capacity = c + steps;
  big.length = c;
  auto grow = [&](const Tensor& t) {  // [1,kv,c,hd] -> [n,kv,c+steps,hd]
    Tensor out = torch::zeros({n, t.size(1), c + steps, t.size(3)}, opts);
    out.slice(2, 0, c).copy_(t.expand({n, -1, -1, -1}));
    return out;
  };
  for (size_t l = 0; l < cache.k.size(); ++l) {
    big.k.push_back(grow(cache.k[l]));
    big.v.push_back(grow(cache.v[l]));
  }
  return big;
}

// One group (same context, longest continuation `maxl` tokens): the context runs once, then all its
// continuations as one batch on top of the context's KV cache.
void score_group_on_context(model::LlamaModelImpl& model, const std::vector<EncodedPair>& pairs,
                            const std::vector<size_t>& g, size_t maxl, std::vector<LoglikResult>& result) {
  const auto dev = model.device();
  const auto opts = torch::TensorOptions().dtype(model.dtype()).device(dev);
  const auto& ctx = pairs[g[0]].context;
  const auto c = static_cast<int64_t>(ctx.size()), n = static_cast<int64_t>(g.size());
  const auto steps = static_cast<int64_t>(maxl) - 1;  // continuation tokens that are model inputs
  model::KVCache cache = model::KVCache::create(model.config(), 1, c, opts);
  Tensor hc = model.forward_cached(torch::tensor(ctx, torch::kInt64).unsqueeze(0).to(dev), cache);  // [1,c,H]
  Tensor last = hc[0][c - 1].unsqueeze(0);                                                          // [1,H]
  Tensor hn;                                                                                        // [n,steps,H]
  if (steps > 0) {
    model::KVCache big = repeat_cache(cache, n, steps, opts);
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
void score_one_token_groups(model::LlamaModelImpl& model, const std::vector<EncodedPair>& pairs,
                            std::vector<const std::vector<size_t>*> single, int64_t max_batch_tokens,
                            int64_t max_batch, std::vector<LoglikResult>& result) {
  const auto dev = model.device();
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
}

}  // namespace

std::vector<LoglikResult> loglikelihood_shared_context(model::LlamaModelImpl& model,
                                                       const std::vector<EncodedPair>& pairs,
                                                       const std::vector<std::vector<size_t>>& groups,
                                                       int64_t max_length, int64_t max_batch_tokens,
                                                       int64_t max_batch) {
  torch::NoGradGuard no_grad;
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
    if (!ok)
      rest.insert(rest.end(), g.begin(), g.end());
    else if (maxl == 1)
      single.push_back(&g);
    else
      score_group_on_context(model, pairs, g, maxl, result);
  }
  score_one_token_groups(model, pairs, std::move(single), max_batch_tokens, max_batch, result);
  if (!rest.empty()) {
    std::vector<EncodedPair> sub;
    for (size_t i : rest) sub.push_back(pairs[i]);
    auto r = loglikelihood(model, sub, max_length, max_batch_tokens, max_batch);
    for (size_t j = 0; j < rest.size(); ++j) result[rest[j]] = r[j];
  }
  return result;
}

}  // namespace sftgo::eval
