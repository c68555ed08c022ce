// The best-evaluation tracker behind train.save_best and train.early_stopping_* (train/best.h).
#include "sftgo/train/best.h"

#include <algorithm>
#include <cmath>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/metrics.h"

namespace sftgo::train {

bool lower_is_better(const std::string& metric) {
  return metric.rfind("eval_loss", 0) == 0 || metric == "eval_worst_group";
}

std::vector<std::string> known_eval_metrics(const std::map<std::string, std::vector<std::string>>& tasks) {
  std::vector<std::string> out = {"eval_loss", "eval_loss_ce", "eval_worst_group"};
  for (const auto& [task, metrics] : tasks)
    for (const auto& m : metrics) out.push_back("eval_" + task + "_" + m);
  return out;
}

void check_eval_metric(const std::string& key, const std::string& metric, const std::vector<std::string>& known) {
  SFTGO_CHECK(std::find(known.begin(), known.end(), metric) != known.end(), ErrorKind::kConfig, key, ": '", metric,
              "' is not an eval metric of this run; expected one of ", join(known, ", "),
              " (task metrics come from train.eval_tasks)");
}

double eval_metric_value(const EvalMetrics& e, const std::string& metric) {
  if (metric == "eval_loss") return e.loss;
  if (metric == "eval_loss_ce") return e.loss_ce;
  if (metric == "eval_worst_group") return std::max(e.loss_imp, e.loss_unimp);  // the group the max() trains
  const auto it = e.tasks.find(metric);
  return it == e.tasks.end() ? NAN : it->second;
}

BestTracker::BestTracker(std::string metric, double min_delta) : min_delta_(min_delta), lower_(lower_is_better(metric)) {
  state_.metric = std::move(metric);
}

bool BestTracker::update(int64_t step, double value) {
  const bool first = state_.step < 0;
  const bool better = std::isfinite(value) &&
                      (first || (lower_ ? value < state_.value - min_delta_ : value > state_.value + min_delta_));
  if (better) {
    state_.value = value;
    state_.step = step;
    state_.bad_evals = 0;
  } else {
    ++state_.bad_evals;
  }
  return better;
}

void BestTracker::restore(const checkpoint::TrackedBest& saved, const std::string& dir) {
  SFTGO_CHECK_HINT(saved.metric == state_.metric, ErrorKind::kConfig,
                   "resume with the metric the run tracked, or start a new run", dir, " tracked '", saved.metric,
                   "', this run tracks '", state_.metric, "'");
  state_ = saved;
}

}  // namespace sftgo::train
