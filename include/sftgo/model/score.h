// Scoring: per-token log-probabilities of sequences under a model (perplexity evaluation).
// CLI contract wired by the app: `sftgo-train score --model DIR --data FILE.jsonl [--out FILE]`.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace sftgo::model {

class LlamaModelImpl;

struct ScoreCliOptions {
  std::string model_dir;            // HF directory (config.json + safetensors)
  std::string adapter_dir;          // optional PEFT LoRA adapter applied on top (model/lora.h)
  std::string dtype = "float32";    // "float32" | "bfloat16"
  std::string device = "cpu";       // "cpu" | "cuda" | "cuda:N"
  int64_t max_batch_tokens = 8192;  // padded tokens per forward; sequences are batched by length
  // Optional text -> ids (the app passes the tokenizer's encode); without it {"text": ...} lines
  // are an error.
  std::function<std::vector<int64_t>(const std::string&)> encode;
};

struct ScoreSummary {
  int64_t sequences = 0;
  int64_t scored_tokens = 0;      // sum over sequences of (len - 1)
  double mean_nll = 0.0;          // per scored token, nats
  double perplexity = 0.0;        // exp(mean_nll)
  int64_t non_finite_tokens = 0;  // log-probs that are NaN/Inf (a damaged model); lines say "non_finite": true
};

// Reads JSONL lines {"ids": [...]} (or {"text": "..."} with options.encode) from `in` and writes,
// in input order, one line {"ids": [...], "logprobs": [...]} per input to `out`: logprobs[i] is
// log p(ids[i+1] | ids[0..i]), so it has len-1 entries. Blank lines are skipped. Errors name the
// line number (sftgo::Error kData). Returns token-weighted mean NLL and perplexity.
ScoreSummary run_score_cli(const ScoreCliOptions& options, std::istream& in, std::ostream& out);

// Library form: log-probs for each sequence (len-1 each), batched by length under max_batch_tokens.
// The LM head and log-softmax run on blocks of scored positions (~512 MiB of fp32 logits each, split
// evenly), so memory does not grow with [tokens, vocabulary]: a 9,000-token text at the Llama-3
// vocabulary needs no 4.6 GB logits tensor.
// head_block_rows: most scored positions per LM-head block (0 = auto, as above).
std::vector<std::vector<double>> score_logprobs(LlamaModelImpl& model, const std::vector<std::vector<int64_t>>& seqs,
                                                int64_t max_batch_tokens = 8192, int64_t head_block_rows = 0);

}  // namespace sftgo::model
