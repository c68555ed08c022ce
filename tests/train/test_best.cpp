// The best-evaluation tracker (train/best.h) behind train.save_best and train.early_stopping_*: which
// direction is better, min_delta, patience counting, NaN, and the state a resume restores.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/train/best.h"
#include "sftgo/train/metrics.h"

using namespace sftgo;
using namespace sftgo::train;

TEST(BestTracker, LossesGetBetterDownwardsAccuraciesUpwards) {
  EXPECT_TRUE(lower_is_better("eval_loss"));
  EXPECT_TRUE(lower_is_better("eval_loss_ce"));
  EXPECT_TRUE(lower_is_better("eval_worst_group"));
  EXPECT_FALSE(lower_is_better("eval_hellaswag_acc"));
  EXPECT_FALSE(lower_is_better("eval_truthfulqa_mc2_mc2"));
}

TEST(BestTracker, LowerIsBetterCountsEvaluationsWithoutImprovement) {
  BestTracker t("eval_loss", 0.0);
  EXPECT_TRUE(t.update(0, 5.0));  // the first value is the best so far
  EXPECT_TRUE(t.update(10, 4.0));
  EXPECT_FALSE(t.update(20, 4.0));  // equal is no improvement
  EXPECT_FALSE(t.update(30, 4.5));
  EXPECT_EQ(t.evals_without_improvement(), 2);
  EXPECT_TRUE(t.update(40, 3.9));
  EXPECT_EQ(t.evals_without_improvement(), 0);
  EXPECT_EQ(t.state().step, 40);
  EXPECT_DOUBLE_EQ(t.state().value, 3.9);
}

TEST(BestTracker, HigherIsBetterWithMinDelta) {
  BestTracker t("eval_arc_challenge_acc", 0.05);
  EXPECT_TRUE(t.update(0, 0.25));
  EXPECT_FALSE(t.update(5, 0.30));  // +0.05 is not more than min_delta
  EXPECT_EQ(t.state().step, 0);     // and does not move the best
  EXPECT_TRUE(t.update(10, 0.31));
  EXPECT_FALSE(t.update(15, 0.10));
  EXPECT_EQ(t.evals_without_improvement(), 1);
  EXPECT_EQ(t.state().step, 10);
}

TEST(BestTracker, NonFiniteValuesNeverImprove) {
  BestTracker t("eval_loss", 0.0);
  EXPECT_FALSE(t.update(0, NAN));
  EXPECT_EQ(t.state().step, -1);
  EXPECT_TRUE(t.update(1, 2.0));
  EXPECT_FALSE(t.update(2, -INFINITY));
  EXPECT_EQ(t.state().step, 1);
}

TEST(BestTracker, RestoreContinuesTheCountAndRefusesAnotherMetric) {
  BestTracker a("eval_loss", 0.1);
  a.update(0, 3.0);
  a.update(2, 2.95);
  BestTracker b("eval_loss", 0.1);
  b.restore(a.state(), "ckpt");
  EXPECT_FALSE(b.update(4, 2.91));
  EXPECT_EQ(b.evals_without_improvement(), 2);
  EXPECT_EQ(b.state().step, 0);
  BestTracker c("eval_loss_ce", 0.1);
  EXPECT_THROW(c.restore(a.state(), "ckpt"), Error);
}

TEST(BestTracker, MetricValuesAndNames) {
  EvalMetrics e;
  e.loss = 1.5;
  e.loss_ce = 2.0;
  e.loss_imp = 3.0;
  e.loss_unimp = 2.5;
  e.tasks["eval_hellaswag_acc"] = 0.4;
  EXPECT_DOUBLE_EQ(eval_metric_value(e, "eval_loss"), 1.5);
  EXPECT_DOUBLE_EQ(eval_metric_value(e, "eval_loss_ce"), 2.0);
  EXPECT_DOUBLE_EQ(eval_metric_value(e, "eval_worst_group"), 3.0);
  EXPECT_DOUBLE_EQ(eval_metric_value(e, "eval_hellaswag_acc"), 0.4);
  EXPECT_TRUE(std::isnan(eval_metric_value(e, "eval_mmlu_acc")));
  const auto known = known_eval_metrics({{"hellaswag", {"acc", "acc_norm"}}});
  EXPECT_NO_THROW(check_eval_metric("train.save_best", "eval_hellaswag_acc_norm", known));
  try {
    check_eval_metric("train.save_best", "eval_accuracy", known);
    FAIL() << "expected an error";
  } catch (const Error& err) {
    EXPECT_NE(err.message().find("train.save_best"), std::string::npos);
    EXPECT_NE(err.message().find("eval_hellaswag_acc"), std::string::npos);
  }
}

TEST(BestTracker, TrainerStateCarriesBothTrackersAndRefusesBadOnes) {
  checkpoint::TrainerState s;
  s.total_steps = 10;
  s.rng_state_hex = checkpoint::cpu_rng_state_hex();
  EXPECT_EQ(s.to_json().find("\"best\""), std::string::npos);  // absent when the run tracks none
  s.best = checkpoint::TrackedBest{"eval_loss", 2.5, 4, 1};
  s.early_stopping = checkpoint::TrackedBest{"eval_arc_challenge_acc", 0.25, 2, 3};
  const auto back = checkpoint::TrainerState::from_json(s.to_json(), "t.json");
  ASSERT_TRUE(back.best && back.early_stopping);
  EXPECT_EQ(back.best->metric, "eval_loss");
  EXPECT_EQ(back.best->value, 2.5);
  EXPECT_EQ(back.best->step, 4);
  EXPECT_EQ(back.best->bad_evals, 1);
  EXPECT_EQ(back.early_stopping->bad_evals, 3);
  std::string bad = s.to_json();
  bad.replace(bad.find("\"bad_evals\": 1"), 14, "\"bad_evals\": -1");
  try {
    checkpoint::TrainerState::from_json(bad, "t.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("best.bad_evals"), std::string::npos) << e.message();
  }
}

TEST(BestTracker, PruningKeepsTheBestLinkTargetBesideKeepLast) {
  namespace fs = std::filesystem;
  const fs::path run = fs::temp_directory_path() / ("sftgo_best_" + std::to_string(::getpid()));
  fs::remove_all(run);
  for (int step : {2, 4, 6, 8}) {
    const fs::path d = fs::path(checkpoint::checkpoints_root(run.string())) / checkpoint::checkpoint_dir_name(step);
    fs::create_directories(d);
    std::ofstream(d / "trainer_state.json") << "{}";
  }
  const std::string root = checkpoint::checkpoints_root(run.string());
  checkpoint::point_best_at(run.string(), root + "/" + checkpoint::checkpoint_dir_name(4));
  EXPECT_EQ(fs::read_symlink(fs::path(root) / "best").string(), "step_00000004");
  checkpoint::prune_checkpoints(run.string(), 8, 2);  // keeps 8 and 6, and the best 4
  std::vector<std::string> left;
  for (const auto& d : checkpoint::list_checkpoints(run.string())) left.push_back(fs::path(d).filename().string());
  EXPECT_EQ(left, (std::vector<std::string>{"step_00000004", "step_00000006", "step_00000008"}));
  checkpoint::point_best_at(run.string(), root + "/" + checkpoint::checkpoint_dir_name(8));
  checkpoint::prune_checkpoints(run.string(), 8, 2);  // the old best goes
  left.clear();
  for (const auto& d : checkpoint::list_checkpoints(run.string())) left.push_back(fs::path(d).filename().string());
  EXPECT_EQ(left, (std::vector<std::string>{"step_00000006", "step_00000008"}));
  fs::remove_all(run);
}
