// Per-step metrics: one JSON object per line in RUN_DIR/metrics.jsonl, and the terminal progress line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sftgo::model {
class LlamaModelImpl;
}

namespace sftgo::train {

struct StepMetrics {
  int64_t step = 0;  // optimizer steps completed, 1-based after the first update
  double epoch = 0;  // fractional epoch
  double loss = 0;   // the objective (step-wide)
  double loss_ce = 0;
  double loss_imp = 0;
  double loss_unimp = 0;
  int worst_group = -1;  // 1 = important, 0 = unimportant, -1 = n/a
  int64_t count_imp = 0;
  int64_t count_unimp = 0;
  double lambda = 0;
  double lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;  // tokens forwarded this step (all ranks)
  int64_t trained_tokens = 0;
  double tokens_per_s = 0;
  double mfu = -1;  // model FLOPs utilisation on GPU; -1 when unknown (CPU, or a GPU of unknown peak)
  // GPU only (-1 elsewhere): the step's peak memory held by tensors and reserved by the CUDA caching
  // allocator, in GB (1e9 bytes), the maximum over ranks. The reserved peak decides an out-of-memory.
  double gpu_mem_allocated_gb = -1;
  double gpu_mem_reserved_gb = -1;
  double step_s = 0;
  // Several ranks only: seconds this rank spent after its last backward waiting for the gradient
  // sums (plain data parallel) or in the ZeRO-1 step (reduce-scatter, shard update, all-gather).
  double comm_s = -1;
  double elapsed_s = 0;
  bool skipped = false;  // non-finite loss or gradient: no update was applied

  std::string to_json() const;
};

// Held-out loss, written as its own metrics.jsonl line {"step", "eval_loss", "eval_loss_ce", ...}.
struct EvalMetrics {
  int64_t step = 0;
  double loss = 0;  // the training objective on the eval set (same lambda as the step)
  double loss_ce = 0;
  double loss_imp = 0;
  double loss_unimp = 0;
  int64_t tokens = 0;  // trained tokens evaluated
  double seconds = 0;
  // train.eval_tasks: "eval_TASK_METRIC" -> value (e.g. eval_hellaswag_acc), on the same line.
  std::map<std::string, double> tasks;
  std::string to_json() const;
};

// Model FLOPs of training (forward + backward, activation recomputation not counted): the numerator of
// MFU. A matmul whose weight holds N values costs 2N FLOPs per token forward, 2N for the input gradient
// and 2N for the weight gradient, which a frozen weight does not get: 6N trained, 4N frozen. Attention
// costs 4 x heads x head_dim per (query, key) pair and layer forward (QK^T and PV) and twice that
// backward: 12 x heads x head_dim. Embedding lookups and element-wise work count nothing.
struct FlopsModel {
  double token_trained = 0;  // values of trained matmul weights every token passes (all, or the LoRA adapters)
  double token_frozen = 0;   // values of frozen matmul weights every token passes (the LoRA base)
  double head_trained = 0;   // the same for the LM head, which only trained positions reach (V x H, its adapters)
  double head_frozen = 0;
  double attention = 0;  // layers x heads x head_dim
};
// From the model's parameters as they are now (requires_grad decides trained or frozen).
FlopsModel flops_model(const model::LlamaModelImpl& model);
// tokens: real tokens forwarded; trained: those that reach the LM head; pairs: (query, key) pairs that
// causal attention within each document computes, the sum over real tokens of position + 1.
//   (6 token_trained + 4 token_frozen) tokens + (6 head_trained + 4 head_frozen) trained + 12 attention pairs
double training_flops(const FlopsModel& f, double tokens, double trained, double pairs);
// flops done by `world` GPUs in `seconds`, over their dense peak (peak_flops each); -1 when unknown.
double model_flops_utilization(double flops, double seconds, int world, double peak_flops);

class MetricsLog {
 public:
  // Opens RUN_DIR/metrics.jsonl for appending; with keep_through_step >= 0 (a resume), lines of
  // later steps left by the interrupted run are dropped first so the log has no duplicates.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // One line per call, written with one write(2) (a crash loses at most the current step). A failed
  // or short write (ENOSPC, EIO) cuts the file back to its last complete line and throws
  // Error(kIo) naming the file: the log never ends in half a line written by this process.
  void write(const StepMetrics& m);
  void write(const EvalMetrics& m);
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::string& json);
  std::string path_;
  int fd_ = -1;
};

// The lines of a metrics.jsonl, without the newlines. A last line without its newline (the writer was
// killed mid-line or the disk filled under an older version) is dropped when it does not parse as a
// JSON object; every other line is returned as is, so line k of the file is element k - 1.
std::vector<std::string> read_metrics_lines(const std::string& path);

// "step 12/300 | loss 2.3456 | ce 2.31 | imp 3.10 | unimp 1.95 | lambda 0.90 | 1.2k tok/s | ETA 4m10s"
// with_lambda: print lambda (only the sftgo objective weighs its groups by it; ce and rho1 runs would
// show a number that does nothing).
std::string progress_line(const StepMetrics& m, int64_t total_steps, bool with_lambda = true);
// "[#######.............]  35%": the terminal's bar in front of progress_line.
std::string progress_bar(int64_t step, int64_t total_steps, int width = 20);
std::string format_duration(double seconds);

}  // namespace sftgo::train
