// Internal to src/train/: the Trainer's state and stages, split over trainer.cpp (the step pipeline
// and the run loop), setup.cpp (the set-up chain) and state.cpp (evaluation, save, resume).
#pragma once

#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/config/config.h"
#include "sftgo/core/timer.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/loader.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/gpu.h"
#include "sftgo/eval/evaluate.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/llama.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/best.h"
#include "sftgo/train/metrics.h"
#include "sftgo/train/options.h"
#include "sftgo/train/precision.h"
#include "sftgo/train/trainer.h"
#include "sftgo/train/updater.h"
#include "step.h"
#include "step_weights.h"

namespace sftgo::train {

// Every rank's `hex` (an even number of hex digits, at most 2 * 256), by rank, on every rank: one
// all-reduce of byte values, each rank filling its own slots (the CUDA generator states for a save).
std::vector<std::string> gather_hex(dist::Comm& comm, const std::string& hex);

// (query, key) pairs that causal attention within documents computes for b: the sum over real tokens of
// position + 1 (positions restart at 0 per document and are 0 at padding, data/collate.h).
int64_t attention_pairs(const MicroBatch& b);

struct Trainer::Impl {
  LoadedConfig loaded;
  const Config& cfg;
  TrainerHooks hooks;

  // Placement: one process per rank, one device per process.
  c10::Device device{c10::kCPU};
  dist::LaunchEnv launch;
  std::shared_ptr<dist::Comm> comm;  // world 1: every collective is the identity
  int rank = 0, world = 1;
  bool stop_all = false;  // some rank was asked to stop: every rank saves and stops

  // The config, decided once at its boundary.
  loss::Objective objective = loss::Objective::kSftGo;
  loss::StatsScope scope = loss::StatsScope::kStep;
  std::unique_ptr<PrecisionPolicy> precision;  // train.precision: weight dtype, forward region, loss inputs, updater
  c10::ScalarType weight_dtype = c10::kFloat;  // the model's parameters, as the policy resolves model.dtype
  LambdaSchedule lambdas;
  optim::LrSchedule schedule;

  // Components.
  std::optional<Tokenizer> tok;
  data::PreparedDataset dataset;
  data::PreparedDataset eval_set;  // data.eval_path; empty when none
  std::unique_ptr<data::DataLoader> loader;
  std::unique_ptr<grouping::GroupingFunction> grouping_fn;  // kept only when dynamic
  grouping::DynamicGroupingFunction* dynamic = nullptr;     // groups chosen per step, or null
  model::LlamaModel model{nullptr};
  model::WeightSource initial_weights;  // ZeRO-3: the weights the model was built without (defer_storage)
  std::unique_ptr<Updater> updater;
  int64_t per_rank_batch = 1, steps_per_epoch = 1, total_steps = 1, n_params = 0;
  dist::GpuPeak gpu_peak;  // CUDA: the MFU denominator
  FlopsModel flops;        // the MFU numerator per token (metrics.h)
  int32_t pad_id = 0;

  // Progress, saved in checkpoints.
  int64_t step = 0;
  int64_t nan_skips = 0;  // consecutive skipped steps
  int64_t tokens_seen = 0;
  double elapsed_before = 0;  // training time of the runs before a resume (trainer_state.json)
  Timer run_wall;              // restarted by run(): this process's part of elapsed_s
  double elapsed_s() const { return elapsed_before + run_wall.seconds(); }

  Impl(LoadedConfig l, TrainerHooks h) : loaded(std::move(l)), cfg(loaded.config), hooks(std::move(h)) {}

  // Set-up chain.
  void setup();
  void place_job();
  void load_data();
  void prepare_groups();
  void build_model();
  void add_lora_adapters();
  void prepare_dynamic(std::vector<data::TokenizedExample>& examples, const std::string& what);
  void prepare_eval();
  void build_updater();
  data::LoaderOptions loader_options() const;

  // The step pipeline.
  StepMetrics train_step();
  std::vector<MicroBatch> assemble_step();
  StepWeights decide_weights(std::vector<MicroBatch>& micro, double lambda);
  loss::GroupStats stats_pre_pass(std::vector<MicroBatch>& micro, double lambda, bool* finite);
  StepTotals backward_passes(std::vector<MicroBatch>& micro, StepWeights& w, double lambda);
  StepTotals forward_backward(std::vector<MicroBatch>& micro, StepWeights& w, double lambda);
  void reduce_totals(StepTotals& t);
  void gpu_metrics(StepMetrics& m, double flops_here);
  double local_flops(const std::vector<MicroBatch>& micro) const;
  StepMetrics step_metrics(const StepWeights& w, const StepTotals& t, double lambda, double lr);
  void choose_weights_policy();
  // The loss coefficients (step_weights.h): the run's policy and the worst group the next speculated
  // step bets on (-1: none, that step takes the pre-pass).
  WeightsPolicy weights_policy;
  int predicted_worst = -1;
  int64_t speculated_steps = 0, redone_steps = 0;  // this process's speculations and lost bets
  bool bet_against = false;                        // SFTGO_TEST_BET_AGAINST=1: bet wrong, always redo (tests)
  int64_t injected_nonfinite_step = -1;            // SFTGO_TEST_NONFINITE_AT=RANK:STEP on this rank (tests)

  // Forward pieces.
  void choose_groups_before_forward(MicroBatch& b);
  loss::FusedLossOptions loss_options(double lambda, MicroBatch& b);
  at::Tensor forward_hidden(const MicroBatch& b);  // [T,H] hidden states of trained positions
  at::Tensor head_weight() const;                  // [V,H]

  // The run loop's pieces.
  std::unique_ptr<MetricsLog> open_run_files(bool resumed);
  void print_progress(const StepMetrics& m, bool tty) const;
  [[noreturn]] void stop_non_finite(int64_t last_finite);
  // Trainer::run's first and last parts: the --resume, true when the run has nothing left to do; the
  // final evaluation-free wrap-up (final save, shutdown, the all-skipped check, the done line).
  bool resume_for_run(const std::string& resume);
  void finish_run(TrainResult& result, int64_t last_saved, int64_t ran, double wall_s);

  EvalMetrics evaluate();
  // Evaluation during training (eval_tracking.cpp, train/best.h): train.eval_tasks scored by rank 0,
  // the train.save_best and train.early_stopping_metric trackers, rank 0's decision shared by all.
  struct EvalDecision {
    bool save_best = false;  // this evaluation is the new best: save it, point checkpoints/best at it
    bool stop = false;       // early stopping: patience used up
  };
  std::vector<eval::TaskEvaluator> eval_tasks;
  std::optional<BestTracker> best, early_stop;
  void prepare_eval_tracking();
  void score_eval_tasks(EvalMetrics& e);
  EvalDecision track_eval(const EvalMetrics& e);
  bool stopped_early_before() const;  // a resumed run whose patience was already used up
  // One evaluation of the run loop: the eval line (with the tasks' scores) into `log` (rank 0), then
  // the best checkpoint (saved unless this step has one: last_saved, last_checkpoint) and its link.
  // True when early stopping ends the run at this step (the same answer on every rank).
  bool evaluate_and_track(MetricsLog* log, int64_t& last_saved, std::string& last_checkpoint);
  // weights_only: train.intermediate_checkpoints: weights (no optimizer state: not resumable).
  std::string save(const std::string& why, bool weights_only = false);
  void add_zero_manifest(checkpoint::SaveRequest& r, const std::string& staging);
  void resume_from(const std::string& dir);
  void restore_cuda_rng(const checkpoint::TrainerState& st, const std::string& dir);
};

}  // namespace sftgo::train
