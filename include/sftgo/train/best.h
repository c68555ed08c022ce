// Tracking the best evaluation of a run: which eval metric, which direction is better, the best value
// and its step, and the evaluations since (train.save_best keeps that step's checkpoint as
// checkpoints/best; train.early_stopping_* stops the run after `patience` evaluations without an
// improvement). The state travels in trainer_state.json, so a resume continues the same count.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sftgo/checkpoint/checkpoint.h"

namespace sftgo::train {

struct EvalMetrics;

// Losses get better downwards; accuracies and the like upwards.
bool lower_is_better(const std::string& metric);

// The eval metrics a run logs: eval_loss, eval_loss_ce, eval_worst_group, and eval_TASK_METRIC for each
// of `tasks` (task name -> its metric names, e.g. hellaswag -> acc, acc_norm).
std::vector<std::string> known_eval_metrics(const std::map<std::string, std::vector<std::string>>& tasks);

// Error(kConfig) naming `key` and the known metrics when `metric` is not one of them.
void check_eval_metric(const std::string& key, const std::string& metric, const std::vector<std::string>& known);

// The metric's value on one eval line; NaN when the line lacks it.
double eval_metric_value(const EvalMetrics& e, const std::string& metric);

class BestTracker {
 public:
  BestTracker(std::string metric, double min_delta);
  // Takes this evaluation; true when it improves on the best by more than min_delta (the first finite
  // value always does), which makes it the best. Otherwise one more evaluation without improvement. A
  // non-finite value never improves.
  bool update(int64_t step, double value);
  int64_t evals_without_improvement() const { return state_.bad_evals; }
  const checkpoint::TrackedBest& state() const { return state_; }
  // From a checkpoint; Error(kConfig) naming `dir` when it tracked another metric.
  void restore(const checkpoint::TrackedBest& saved, const std::string& dir);

 private:
  checkpoint::TrackedBest state_;
  double min_delta_;
  bool lower_;
};

}  // namespace sftgo::train
