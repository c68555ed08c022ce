// Internal to the trainer: the one place that decides a token's loss coefficient in a training step
// (docs/architecture.md, "One training step", and docs/loss.md, "Step statistics").
//
// The loss is L = sum_i w_i * l_i with w_i = coef_all + coef_group[g_i] (loss/group_loss.h). Which
// statistics the coefficients come from, and when they are known, depends on the scope, the
// objective, the micro-batches and ranks of the step and loss.step_stats: the WeightsPlan. A
// StepWeights object holds the plan of one step; the trainer asks it for each micro-batch's loss
// options (known coefficients, or a hook), for the coefficients its metrics use, and whether a
// speculated step must be redone. The fused loss only receives what it hands out, in every plan: no
// training forward falls back on the loss's own choice (the rules applied to its forward's statistics
// when it is given neither known_weights nor a weights_hook).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "sftgo/loss/group_loss.h"

namespace sftgo::train {

// loss.step_stats: how step-scope sftgo learns the step's group means over several micro-batches.
enum class StepStats {
  kAuto,       // speculate where that is bit-identical to the pre-pass (resolve_step_stats), else pre-pass
  kSpeculate,  // forward+backward with the predicted worst group; redo the step when the bet was wrong
  kPrePass,    // a no-grad forward of every micro-batch before the training forwards
};
// "auto" | "speculate" | "prepass"; sftgo::Error(kConfig) naming loss.step_stats otherwise.
StepStats parse_step_stats(const std::string& name);

// auto: speculation gives the pre-pass's coefficients bit for bit unless the training forward draws
// random numbers (LoRA dropout: the no-grad pre-pass draws none, so its group means are those of
// the undropped model) or chooses its groups (a groups_hook makes the loss take two passes where the
// pre-pass's fixed groups allow one). Returns true to speculate.
bool resolve_step_stats(StepStats requested, bool forward_draws_random, bool groups_from_forward);

enum class WeightsPlan {
  kOwnForward,  // scope microbatch, or one micro-batch on one rank: each forward's own statistics
  kFromCounts,  // ce / rho1 at step scope over several micro-batches or ranks: the group sizes suffice
  kPrePass,     // sftgo, several micro-batches: a no-grad forward of each sums the step's statistics
  kSpeculate,   // sftgo, several micro-batches: bet on the worst group (sizes are known), check after
  kGlobalHook,  // sftgo, one micro-batch on several ranks: the forward's statistics all-reduced
};
const char* plan_name(WeightsPlan plan);

// What fixes the plans of a run.
struct WeightsPolicy {
  loss::Objective objective = loss::Objective::kSftGo;
  loss::StatsScope scope = loss::StatsScope::kStep;
  bool speculate = false;  // loss.step_stats, resolved
};

// The plan for a step of `micro_batches` micro-batches on each of `world` ranks, before knowing
// whether a speculation has something to bet on (StepWeights turns kSpeculate into kPrePass then).
WeightsPlan plan_weights(const WeightsPolicy& policy, size_t micro_batches, int world);

// Sums group statistics over the ranks (the identity on one rank); with `finite`, also "finite on
// every rank" (in: this rank's, out: everyone's).
using StatsReduce = std::function<loss::GroupStats(const loss::GroupStats& local, bool* finite)>;

class StepWeights {
 public:
  // predicted_worst: the group a speculation bets on (the previous step's worst group), -1 for none:
  // then the step takes the pre-pass (the first step of a process, or after a skipped step).
  StepWeights(const WeightsPolicy& policy, double lambda, size_t micro_batches, int world, StatsReduce reduce,
              int predicted_worst = -1);

  WeightsPlan plan() const { return plan_; }

  // 1. Before any forward. local_counts: this rank's group sizes (count[] only; known from the labels,
  //    or promised by a dynamic grouping function). Returns true when the caller must run the stats
  //    pre-pass and hand this rank's sums to pre_pass_done (every rank calls it, finite or not).
  bool set_counts(const loss::GroupStats& local_counts);
  void pre_pass_done(const loss::GroupStats& local_stats, bool finite);
  bool finite() const { return finite_; }  // the pre-pass stayed finite on every rank

  // 2. A micro-batch's loss, after its other options are set (a groups_hook among them): the
  //    coefficients when known before the forward (the loss may then take one pass), or a hook that
  //    decides them from the forward's statistics: all-reduced (kGlobalHook), or this forward's own
  //    (kOwnForward, where micro_counts, this micro-batch's group sizes as the loss counts them, often
  //    decide already: an empty group, lambda = 0, ce, rho1). micro_counts is read in kOwnForward only.
  //    The loss value is then multiplied by loss_scale() before its backward.
  void configure(loss::FusedLossOptions& options, const loss::GroupStats& micro_counts);
  double loss_scale() const { return scale_; }
  bool speculating() const { return speculating_; }  // the coefficients handed out are a bet

  // 3. After the backward passes, with the step's statistics summed over micro-batches and ranks
  //    (finite). True when a speculation lost: configure() now hands out the right coefficients and
  //    the caller must discard the gradients and run the step's forward/backward passes again.
  bool confirm(const loss::GroupStats& step_stats);

  // The coefficients the step's metrics use with its statistics (worst_group, loss).
  loss::LossWeights metrics_weights(const loss::GroupStats& step_stats) const;
  // The step's loss value: the mean of the micro-batch objectives (scope microbatch) or the objective
  // under the step's statistics.
  double step_loss(const loss::GroupStats& step_stats, double micro_loss_sum) const;

 private:
  void configure_own_forward(loss::FusedLossOptions& options, const loss::GroupStats& micro_counts) const;

  WeightsPolicy policy_;
  double lambda_;
  size_t micro_batches_;
  int world_;
  StatsReduce reduce_;
  int predicted_;
  WeightsPlan plan_;
  std::optional<loss::LossWeights> fixed_;  // known before the forwards (or after a lost bet)
  bool finite_ = true;
  bool speculating_ = false;
  double scale_ = 1.0;  // microbatch scope: each micro-batch of each rank counts 1/(M*W)
};

}  // namespace sftgo::train
