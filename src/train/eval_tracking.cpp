// Evaluation during training: the multiple-choice tasks of train.eval_tasks (rank 0 scores them with
// the weights in memory), and the trackers behind train.save_best and train.early_stopping_*
// (train/best.h). Rank 0 decides; one small all-reduce gives every rank the same decision, so all of
// them save the best checkpoint and stop at the same step.
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/timer.h"
#include "trainer_impl.h"

namespace fs = std::filesystem;

namespace sftgo::train {
namespace {

// "TASK:PATH" -> the task's options (0-shot, the first train.eval_limit documents).
eval::EvalOptions task_options(const std::string& spec, int64_t limit) {
  const size_t colon = spec.find(':');
  SFTGO_CHECK_HINT(colon != std::string::npos && colon > 0 && colon + 1 < spec.size(), ErrorKind::kConfig,
                   "write each task as TASK:PATH, e.g. hellaswag:data/eval/samples/hellaswag.jsonl",
                   "train.eval_tasks: '", spec, "' is not TASK:PATH");
  eval::EvalOptions o;
  o.task = spec.substr(0, colon);
  o.data_path = spec.substr(colon + 1);
  o.limit = limit;
  return o;
}

}  // namespace

void Trainer::Impl::prepare_eval_tracking() {
  const TrainConfig& t = cfg.train;
  if (t.eval_tasks.empty() && t.save_best.empty() && t.early_stopping_metric.empty()) return;
  SFTGO_CHECK_HINT(!cfg.data.eval_path.empty(), ErrorKind::kConfig, "set data.eval_path to a held-out file",
                   "train.eval_tasks, train.save_best and train.early_stopping_metric act at the evaluations "
                   "(train.eval_every), which need data.eval_path; it is empty");
  std::map<std::string, std::vector<std::string>> task_metrics;  // task -> its metric names
  for (const std::string& item : split(t.eval_tasks, ',')) {
    const std::string spec = trim(item);
    if (spec.empty()) continue;
    const eval::EvalOptions o = task_options(spec, t.eval_limit);
    SFTGO_CHECK(!task_metrics.count(o.task), ErrorKind::kConfig, "train.eval_tasks: task '", o.task,
                "' is given twice");
    try {
      eval_tasks.emplace_back(o, *tok);  // read and tokenised once, here
    } catch (const Error& e) {
      throw Error(ErrorKind::kConfig, "train.eval_tasks entry '" + spec + "': " + e.message(), e.hint(), e.where());
    }
    task_metrics[o.task] = eval_tasks.back().metric_names();
  }
  const std::vector<std::string> known = known_eval_metrics(task_metrics);
  if (!t.save_best.empty()) {
    check_eval_metric("train.save_best", t.save_best, known);
    best.emplace(t.save_best, 0.0);  // any strict improvement is a new best
  }
  if (!t.early_stopping_metric.empty()) {
    check_eval_metric("train.early_stopping_metric", t.early_stopping_metric, known);
    early_stop.emplace(t.early_stopping_metric, t.early_stopping_min_delta);
  }
}

// Rank 0 only: every task on the current weights, in eval mode and without gradients (no dropout, no
// random numbers drawn, so training continues unchanged).
void Trainer::Impl::score_eval_tasks(EvalMetrics& e) {
  if (eval_tasks.empty()) return;
  Timer timer;
  torch::NoGradGuard no_grad;
  const bool training = model->is_training();
  model->eval();
  std::vector<std::string> shown;
  for (const auto& task : eval_tasks) {
    const eval::TaskResult r = task.score(*model);
    for (const auto& [name, v] : r.metrics) {
      e.tasks["eval_" + r.task + "_" + name] = v.value;
      shown.push_back(format("{} {} {:.4f}", r.task, name, v.value));
    }
  }
  if (training) model->train();
  e.seconds += timer.seconds();
  log_info("eval at step {}: {} ({:.1f}s, {} documents per task)", e.step, join(shown, " | "), timer.seconds(),
           cfg.train.eval_limit);
}

Trainer::Impl::EvalDecision Trainer::Impl::track_eval(const EvalMetrics& e) {
  EvalDecision d;
  if (!best && !early_stop) return d;  // no collective: runs without the keys are unchanged
  if (rank == 0) {
    if (best) {
      const checkpoint::TrackedBest before = best->state();
      d.save_best = best->update(e.step, eval_metric_value(e, before.metric));
      if (d.save_best)
        log_info("eval at step {}: {} {:.6g} is the best so far{}", e.step, before.metric, best->state().value,
                 before.step >= 0 ? format(" (was {:.6g} at step {})", before.value, before.step) : std::string());
    }
    if (early_stop) {
      early_stop->update(e.step, eval_metric_value(e, early_stop->state().metric));
      d.stop = stopped_early_before();
    }
  }
  if (world > 1) {  // rank 0's decision, on every rank
    const std::vector<double> v = comm->sum({d.save_best ? 1.0 : 0.0, d.stop ? 1.0 : 0.0});
    d.save_best = v[0] > 0;
    d.stop = v[1] > 0;
  }
  return d;
}

bool Trainer::Impl::evaluate_and_track(MetricsLog* log, int64_t& last_saved, std::string& last_checkpoint) {
  EvalMetrics e = evaluate();
  if (rank == 0) score_eval_tasks(e);
  if (log) log->write(e);
  const EvalDecision d = track_eval(e);
  if (d.save_best) {
    if (last_saved != step) last_checkpoint = save("best eval");
    last_saved = step;
    if (rank == 0) {
      const fs::path dir = fs::path(checkpoint::checkpoints_root(cfg.run.output_dir)) / checkpoint::checkpoint_dir_name(step);
      checkpoint::point_best_at(cfg.run.output_dir, dir.string());
      checkpoint::prune_checkpoints(cfg.run.output_dir, step, cfg.train.keep_last);  // the previous best
    }
  }
  if (d.stop) {
    const checkpoint::TrackedBest& b = early_stop->state();
    log_info("early stopping at step {}/{}: {} has not improved by more than {} for {} evaluations "
             "(train.early_stopping_patience); best {:.6g} at step {}",
             step, total_steps, b.metric, cfg.train.early_stopping_min_delta, b.bad_evals, b.value, b.step);
  }
  return d.stop;
}

bool Trainer::Impl::stopped_early_before() const {
  return early_stop && early_stop->evals_without_improvement() >= cfg.train.early_stopping_patience;
}

}  // namespace sftgo::train
