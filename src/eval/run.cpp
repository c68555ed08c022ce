// The `eval` command's driver: documents -> requests -> model scores -> metrics, one step each.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/eval/evaluate.h"
#include "sftgo/model/inference.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::eval {

using nlohmann::json;

namespace {

// The evaluated documents (the first `count` of `docs`) and the few-shot pool.
struct Documents {
  std::vector<Doc> docs;
  std::vector<Doc> separate_pool;  // --fewshot-data when it is another file
  bool own_pool = true;            // few-shot examples come from `docs` (the document itself skipped)
  size_t count = 0;
  const std::vector<Doc>& pool() const { return own_pool ? docs : separate_pool; }
};

// What the model scores: one context per document and one (context, continuation) pair per choice;
// document d's choices are pairs[first_pair[d] ...].
struct Requests {
  std::vector<std::string> contexts;
  std::vector<EncodedPair> pairs;
  std::vector<size_t> first_pair;
};

void check_options(const TaskInfo& task, const EvalOptions& o) {
  SFTGO_CHECK(o.shots >= 0, ErrorKind::kUsage, "--shots must be >= 0, got ", o.shots);
  SFTGO_CHECK(o.shots == 0 || task.allows_fewshot, ErrorKind::kUsage, task.name,
              " carries lm_eval's fixed 6-shot QA primer (num_fewshot 0); run it with --shots 0");
  SFTGO_CHECK(o.max_batch_tokens > 0 && o.batch_size > 0, ErrorKind::kUsage,
              "--max-batch-tokens and --batch-size must be positive");
}

Documents read_documents(const TaskInfo& task, const EvalOptions& o) {
  Documents d;
  d.docs = read_task_file(task, o.data_path);
  d.own_pool = o.fewshot_path.empty() || o.fewshot_path == o.data_path;
  if (o.shots > 0 && !d.own_pool) d.separate_pool = read_task_file(task, o.fewshot_path);
  d.count = o.limit >= 0 ? std::min(d.docs.size(), static_cast<size_t>(o.limit)) : d.docs.size();
  SFTGO_CHECK(d.count > 0, ErrorKind::kUsage, "--limit ", o.limit, " leaves no documents");
  return d;
}

// HFLM's special tokens: the prefix its encode adds, and the token that stands for an empty context.
EncodeOptions encode_options(const Tokenizer& tok) {
  EncodeOptions enc;
  enc.prefix_id = tokenizer_prefix_id(tok);
  auto bos = tok.bos_id();
  auto eos = tok.eos_id();
  SFTGO_CHECK(bos || eos, ErrorKind::kTokenizer, tok.source_path(), ": needs a BOS or EOS token for empty contexts");
  enc.empty_context_id = bos ? *bos : *eos;
  return enc;
}

Requests build_requests(const TaskInfo& task, const Documents& d, const Tokenizer& tok, const EncodeOptions& enc,
                        int64_t shots) {
  Requests q;
  q.contexts.resize(d.count);
  q.first_pair.resize(d.count);
  for (size_t i = 0; i < d.count; ++i) {
    const Doc& doc = d.docs[i];
    q.contexts[i] = build_context(task, doc, pick_fewshot(task, doc, d.pool(), shots, d.own_pool));
    q.first_pair[i] = q.pairs.size();
    for (const auto& c : doc.choices) q.pairs.push_back(encode_pair(tok, enc, q.contexts[i], " " + c));
  }
  return q;
}

void check_vocabulary(const Requests& q, int64_t vocab, const Tokenizer& tok) {
  for (const auto& p : q.pairs)
    for (const auto* v : {&p.context, &p.continuation})
      for (int64_t id : *v)
        SFTGO_CHECK(id >= 0 && id < vocab, ErrorKind::kData, "eval: token id ", id, " from ", tok.source_path(),
                    " is outside the model vocabulary [0, ", vocab, ")");
}

std::vector<LoglikResult> score_requests(model::LlamaModelImpl& m, const Documents& d, const Requests& q,
                                         const EvalOptions& o) {
  const int64_t max_length = o.max_length > 0 ? o.max_length : m.config().max_position_embeddings;
  if (!o.share_context) return loglikelihood(m, q.pairs, max_length, o.max_batch_tokens, o.batch_size);
  std::vector<std::vector<size_t>> groups(d.count);  // one group per document: its choices
  for (size_t i = 0; i < d.count; ++i)
    for (size_t c = 0; c < d.docs[i].choices.size(); ++c) groups[i].push_back(q.first_pair[i] + c);
  return loglikelihood_shared_context(m, q.pairs, groups, max_length, o.max_batch_tokens, o.batch_size);
}

// Per-document metrics into `r` (and the --samples lines); returns MMLU's accuracies by subject.
std::map<std::string, std::vector<double>> document_metrics(const TaskInfo& task, const Documents& d,
                                                            const Requests& q, const std::vector<LoglikResult>& ll,
                                                            const std::string& samples_path, TaskResult& r) {
  std::map<std::string, std::vector<double>> per_metric, per_subject;
  // The one output rule (sftgo/core/files.h): checked writes, the OS reason on failure, atomic replace.
  std::unique_ptr<OutputStream> samples;
  if (!samples_path.empty()) samples = std::make_unique<OutputStream>(samples_path);
  for (size_t i = 0; i < d.count; ++i) {
    const Doc& doc = d.docs[i];
    std::vector<double> lls;
    std::vector<bool> greedy;
    for (size_t c = 0; c < doc.choices.size(); ++c) {
      lls.push_back(ll[q.first_pair[i] + c].loglik);
      const bool bad = !std::isfinite(lls.back());
      r.non_finite_logliks += bad;
      if (bad && r.first_non_finite_doc < 0) r.first_non_finite_doc = static_cast<int64_t>(i);
      greedy.push_back(ll[q.first_pair[i] + c].is_greedy);
    }
    auto dm = doc_metrics(task, doc, lls);
    for (const auto& name : task.metrics) per_metric[name].push_back(dm.at(name));
    if (task.kind == TaskKind::kMmlu) per_subject[doc.subject].push_back(dm.at("acc"));
    if (samples) {
      json s = {{"doc", i},         {"source", doc.source},  {"context", q.contexts[i]}, {"choices", doc.choices},
                {"gold", doc.gold}, {"loglikelihoods", lls}, {"is_greedy", greedy},      {"metrics", dm}};
      *samples << s.dump() << "\n";
    }
  }
  if (samples) samples->finish();
  for (const auto& [name, values] : per_metric) r.metrics[name] = mean_with_stderr(values);
  return per_subject;
}

// lm_eval's MMLU groups: subject -> category -> mmlu, each a size-weighted mean with pooled stderr.
void mmlu_groups(const std::map<std::string, std::vector<double>>& per_subject, TaskResult& r) {
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

json metric_json(const MetricValue& v) {
  json j;
  j["value"] = std::isnan(v.value) ? json() : json(v.value);
  j["stderr"] = std::isnan(v.stderr_) ? json() : json(v.stderr_);
  return j;
}

}  // namespace

TaskResult run_eval(const EvalOptions& o) {
  const TaskInfo& task = find_task(o.task);
  check_options(task, o);
  const Documents docs = read_documents(task, o);
  const Tokenizer tok = Tokenizer::load(o.tokenizer_path.empty() ? o.model_dir : o.tokenizer_path);
  const Requests requests = build_requests(task, docs, tok, encode_options(tok), o.shots);

  model::LlamaModel m = model::load_for_inference(
      {.model_dir = o.model_dir, .adapter_dir = o.adapter_dir, .dtype = o.dtype, .device = o.device});
  check_vocabulary(requests, m->config().vocab_size, tok);
  log_info("eval {}: {} documents, {} requests, {}-shot, device {}", task.name, docs.count, requests.pairs.size(),
           o.shots, m->device().str());
  const std::vector<LoglikResult> ll = score_requests(*m, docs, requests, o);

  TaskResult r;
  r.task = task.name;
  r.shots = o.shots;
  r.docs = static_cast<int64_t>(docs.count);
  const auto per_subject = document_metrics(task, docs, requests, ll, o.samples_path, r);
  if (task.kind == TaskKind::kMmlu) mmlu_groups(per_subject, r);
  return r;
}

struct TaskEvaluator::State {
  const TaskInfo* task = nullptr;
  EvalOptions options;
  Documents docs;
  Requests requests;
  std::string tokenizer_path;
};

TaskEvaluator::TaskEvaluator(const EvalOptions& o, const Tokenizer& tok) : s_(std::make_unique<State>()) {
  s_->task = &find_task(o.task);
  check_options(*s_->task, o);
  s_->options = o;
  s_->docs = read_documents(*s_->task, o);
  s_->requests = build_requests(*s_->task, s_->docs, tok, encode_options(tok), o.shots);
  s_->tokenizer_path = tok.source_path();
}

TaskEvaluator::~TaskEvaluator() = default;
TaskEvaluator::TaskEvaluator(TaskEvaluator&&) noexcept = default;
const std::string& TaskEvaluator::task() const { return s_->task->name; }
const std::vector<std::string>& TaskEvaluator::metric_names() const { return s_->task->metrics; }

TaskResult TaskEvaluator::score(model::LlamaModelImpl& m) const {
  for (const auto& p : s_->requests.pairs)
    for (const auto* v : {&p.context, &p.continuation})
      for (int64_t id : *v)
        SFTGO_CHECK(id >= 0 && id < m.config().vocab_size, ErrorKind::kData, "eval ", s_->task->name, ": token id ",
                    id, " from ", s_->tokenizer_path, " is outside the model vocabulary [0, ", m.config().vocab_size,
                    ")");
  const std::vector<LoglikResult> ll = score_requests(m, s_->docs, s_->requests, s_->options);
  TaskResult r;
  r.task = s_->task->name;
  r.shots = s_->options.shots;
  r.docs = static_cast<int64_t>(s_->docs.count);
  const auto per_subject = document_metrics(*s_->task, s_->docs, s_->requests, ll, "", r);
  if (s_->task->kind == TaskKind::kMmlu) mmlu_groups(per_subject, r);
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
