// The one place that decides a token's loss coefficient in a training step (step_weights.h).
#include "step_weights.h"

#include <cmath>

#include "sftgo/core/error.h"

namespace sftgo::train {

StepStats parse_step_stats(const std::string& name) {
  if (name == "auto") return StepStats::kAuto;
  if (name == "speculate") return StepStats::kSpeculate;
  if (name == "prepass") return StepStats::kPrePass;
  SFTGO_FAIL_HINT(ErrorKind::kConfig, "use one of: auto, speculate, prepass", "unknown loss.step_stats '", name, "'");
}

bool resolve_step_stats(StepStats requested, bool forward_draws_random, bool groups_from_forward) {
  if (requested != StepStats::kAuto) return requested == StepStats::kSpeculate;
  return !forward_draws_random && !groups_from_forward;
}

const char* plan_name(WeightsPlan plan) {
  switch (plan) {
    case WeightsPlan::kOwnForward: return "own forward";
    case WeightsPlan::kFromCounts: return "from counts";
    case WeightsPlan::kPrePass: return "pre-pass";
    case WeightsPlan::kSpeculate: return "speculate";
    case WeightsPlan::kGlobalHook: return "global hook";
  }
  return "?";
}

WeightsPlan plan_weights(const WeightsPolicy& policy, size_t micro_batches, int world) {
  if (policy.scope != loss::StatsScope::kStep) return WeightsPlan::kOwnForward;
  const bool sftgo = policy.objective == loss::Objective::kSftGo;
  if (!sftgo) return micro_batches > 1 || world > 1 ? WeightsPlan::kFromCounts : WeightsPlan::kOwnForward;
  if (micro_batches > 1) return policy.speculate ? WeightsPlan::kSpeculate : WeightsPlan::kPrePass;
  return world > 1 ? WeightsPlan::kGlobalHook : WeightsPlan::kOwnForward;
}

StepWeights::StepWeights(const WeightsPolicy& policy, double lambda, size_t micro_batches, int world,
                         StatsReduce reduce, int predicted_worst)
    : policy_(policy),
      lambda_(lambda),
      micro_batches_(micro_batches),
      world_(world),
      reduce_(std::move(reduce)),
      predicted_(predicted_worst),
      plan_(plan_weights(policy, micro_batches, world)) {
  // Nothing to bet on: this step learns the statistics first (and the next step bets on its winner).
  if (plan_ == WeightsPlan::kSpeculate && predicted_ != 0 && predicted_ != 1) plan_ = WeightsPlan::kPrePass;
  if (policy_.scope == loss::StatsScope::kMicrobatch)
    scale_ = 1.0 / static_cast<double>(micro_batches_ * static_cast<size_t>(world_));
}

bool StepWeights::set_counts(const loss::GroupStats& local_counts) {
  switch (plan_) {
    case WeightsPlan::kFromCounts:
      fixed_ = loss::compute_loss_weights(reduce_(local_counts, nullptr), lambda_, policy_.objective);
      return false;
    case WeightsPlan::kSpeculate: {
      const loss::GroupStats counts = reduce_(local_counts, nullptr);
      // lambda = 0, an empty group or no tokens: the counts decide, nothing to bet on.
      fixed_ = loss::weights_from_counts(counts, lambda_, policy_.objective);
      if (!fixed_) {
        fixed_ = loss::sftgo_weights_for_worst(counts, lambda_, predicted_);
        speculating_ = true;
      }
      return false;
    }
    case WeightsPlan::kPrePass: return true;
    case WeightsPlan::kOwnForward:
    case WeightsPlan::kGlobalHook: return false;
  }
  return false;
}

void StepWeights::pre_pass_done(const loss::GroupStats& local_stats, bool finite) {
  SFTGO_CHECK(plan_ == WeightsPlan::kPrePass, ErrorKind::kInternal, "stats pre-pass in plan ", plan_name(plan_));
  finite_ = finite;
  // Every rank takes part even after a non-finite forward, so the collectives stay matched.
  const loss::GroupStats stats = reduce_(local_stats, &finite_);
  if (finite_) fixed_ = loss::compute_loss_weights(stats, lambda_, policy_.objective);
}

void StepWeights::configure(loss::FusedLossOptions& options, const loss::GroupStats& micro_counts) {
  if (plan_ == WeightsPlan::kOwnForward) {
    configure_own_forward(options, micro_counts);
    return;
  }
  // Coefficients known before the forward: the loss may take one pass (3 LM-head GEMMs instead of 4).
  if (fixed_) options.known_weights = *fixed_;
  if (plan_ != WeightsPlan::kGlobalHook) return;
  // Every rank reaches the hook (a local NaN must not skip the collective): the finiteness check runs
  // on the global sums instead, identically on every rank.
  options.check_numerics = false;
  options.weights_hook = [this](const loss::GroupStats& local) {
    const loss::GroupStats global = reduce_(local, nullptr);
    if (!std::isfinite(global.total_loss())) return loss::LossWeights{NAN, {NAN, NAN}, -1};
    return loss::compute_loss_weights(global, lambda_, policy_.objective);
  };
}

// The micro-batch's own statistics decide. Its counts (those the loss counts: trained labels, and the
// important ones among them) fix the coefficients when weights_from_counts says so; handing those
// over keeps the loss's one-pass choice as it was, since the loss would have derived the same ones.
// Otherwise, and whenever the forward picks the groups (a groups_hook: the counts are then a promise,
// and known_weights would be applied over groups not chosen yet), the hook applies the rules to the
// forward's own sums: no collective, so check_numerics stays as the caller set it. The metrics do not
// read what is handed out here (metrics_weights applies the rules to the step's statistics).
void StepWeights::configure_own_forward(loss::FusedLossOptions& options, const loss::GroupStats& micro_counts) const {
  if (!options.groups_hook) {
    options.known_weights = loss::weights_from_counts(micro_counts, lambda_, policy_.objective);
    if (options.known_weights) return;
  }
  options.weights_hook = [lambda = lambda_, objective = policy_.objective](const loss::GroupStats& local) {
    return loss::compute_loss_weights(local, lambda, objective);
  };
}

bool StepWeights::confirm(const loss::GroupStats& step_stats) {
  if (!speculating_) return false;
  speculating_ = false;
  const loss::LossWeights truth = loss::compute_loss_weights(step_stats, lambda_, policy_.objective);
  const loss::LossWeights& bet = *fixed_;
  if (truth.coef_all == bet.coef_all && truth.coef_group[0] == bet.coef_group[0] &&
      truth.coef_group[1] == bet.coef_group[1])
    return false;
  fixed_ = truth;
  return true;
}

loss::LossWeights StepWeights::metrics_weights(const loss::GroupStats& step_stats) const {
  // A speculated step's coefficients are those of its statistics (confirm made sure); the worst group
  // is named from them also where the counts alone fixed the coefficients (lambda = 0).
  if (fixed_ && plan_ != WeightsPlan::kSpeculate) return *fixed_;
  return loss::compute_loss_weights(step_stats, lambda_, policy_.objective);
}

double StepWeights::step_loss(const loss::GroupStats& step_stats, double micro_loss_sum) const {
  if (policy_.scope == loss::StatsScope::kMicrobatch)
    return micro_loss_sum / static_cast<double>(micro_batches_ * static_cast<size_t>(world_));
  return loss::compute_loss_metrics(step_stats, metrics_weights(step_stats), lambda_).loss;
}

}  // namespace sftgo::train
