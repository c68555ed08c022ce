// Log-likelihood multiple-choice evaluation (`sftgo-train eval`): tokenises context/continuation
// pairs as lm_eval's HFLM does, scores them with the model in length-sorted batches and reports
// lm_eval's metrics with standard errors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sftgo/eval/metrics.h"
#include "sftgo/eval/tasks.h"

namespace sftgo {
class Tokenizer;
}
namespace sftgo::model {
class LlamaModelImpl;
}

namespace sftgo::eval {

// ---- Tokenisation (lm_eval HFLM._encode_pair) -----------------------------------------------------

struct EncodeOptions {
  std::optional<int32_t> prefix_id;  // prepended to every encoding (BOS when the tokenizer adds it)
  int32_t empty_context_id = 0;      // context for an empty context string (HFLM prefix_token_id)
};

// The token HF's tokenizer.encode(add_special_tokens=True) prepends, read from tokenizer.json's
// post_processor (TemplateProcessing, possibly inside a Sequence); nullopt when it adds nothing.
std::optional<int32_t> tokenizer_prefix_id(const Tokenizer& tok);

struct EncodedPair {
  std::vector<int64_t> context;       // non-empty
  std::vector<int64_t> continuation;  // non-empty
};

// Trailing whitespace of the context moves to the continuation; the whole string is encoded and
// split at the length of the encoded context (so merges across the boundary count as context).
EncodedPair encode_pair(const Tokenizer& tok, const EncodeOptions& options, const std::string& context,
                        const std::string& continuation);

// ---- Scoring ----------------------------------------------------------------------------------------

struct LoglikResult {
  double loglik = 0.0;     // sum of log p(continuation token | prefix)
  bool is_greedy = false;  // every continuation token is the argmax
};

// Scores every pair (left-truncated to max_length + 1 tokens as HFLM does), longest first, at most
// `max_batch_tokens` padded tokens and `max_batch` rows per forward. Logits are computed only at
// continuation positions, so the full [B,S,V] tensor is never built.
std::vector<LoglikResult> loglikelihood(model::LlamaModelImpl& model, const std::vector<EncodedPair>& pairs,
                                        int64_t max_length, int64_t max_batch_tokens = 16384, int64_t max_batch = 64);

// Same values, computing each shared context once: every group (the choices of one document, all
// with the same context tokens) runs its context through the model once, then all its
// continuations as one batch on top of that KV cache. Groups whose continuations are all one token
// (MMLU's " A".." D") need only the context's last hidden state: their contexts are batched across
// documents by length. Groups that would be left-truncated, or whose contexts differ, go through
// loglikelihood() instead. Equal to it up to fp32 rounding (a different attention call).
std::vector<LoglikResult> loglikelihood_shared_context(model::LlamaModelImpl& model,
                                                       const std::vector<EncodedPair>& pairs,
                                                       const std::vector<std::vector<size_t>>& groups,
                                                       int64_t max_length, int64_t max_batch_tokens = 16384,
                                                       int64_t max_batch = 64);

// ---- The command -------------------------------------------------------------------------------------

struct EvalOptions {
  std::string model_dir;
  std::string adapter_dir;     // optional PEFT LoRA adapter applied on top (model/lora.h)
  std::string tokenizer_path;  // default: model_dir
  std::string task;
  std::string data_path;
  std::string fewshot_path;  // default: data_path (then the document itself is skipped)
  int64_t shots = 0;
  int64_t limit = -1;  // first N documents; -1 = all
  std::string device = "cpu";
  std::string dtype = "float32";
  int64_t max_batch_tokens = 16384;
  int64_t batch_size = 64;
  int64_t max_length = 0;     // context window; 0 = the model's max_position_embeddings (HFLM's default)
  bool share_context = true;  // loglikelihood_shared_context (false: length-sorted full sequences)
  std::string out_path;       // results JSON; empty = none
  std::string samples_path;   // per-document JSONL (context, log-likelihoods, metrics); empty = none
};

struct TaskResult {
  std::string task;
  int64_t shots = 0;
  int64_t docs = 0;
  std::map<std::string, MetricValue> metrics;
  // mmlu: per category and per subject, "acc" only.
  std::map<std::string, std::pair<int64_t, MetricValue>> groups;
  // Choices whose log-likelihood is NaN/Inf (a damaged model): the metrics then mean nothing.
  int64_t non_finite_logliks = 0;
  int64_t first_non_finite_doc = -1;  // index (into --data) of the first document with one; -1 = none
};

TaskResult run_eval(const EvalOptions& options);

// One task scored with a model already in memory (train.eval_tasks: evaluation during training). The
// documents are read, prompted and tokenised once, here; score() runs them through the model's current
// weights as run_eval does (options' model, adapter, dtype, device and output paths are not used).
class TaskEvaluator {
 public:
  TaskEvaluator(const EvalOptions& options, const Tokenizer& tok);
  ~TaskEvaluator();
  TaskEvaluator(TaskEvaluator&&) noexcept;
  const std::string& task() const;
  const std::vector<std::string>& metric_names() const;  // the keys of TaskResult::metrics
  TaskResult score(model::LlamaModelImpl& model) const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};
std::string result_json(const TaskResult& r, const EvalOptions& options);
std::string result_table(const TaskResult& r);  // Markdown for stdout

}  // namespace sftgo::eval
