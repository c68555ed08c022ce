// StepWeights on its own (src/train/step_weights.h): every WeightsPlan with one and several
// micro-batches and ranks. Other ranks are simulated by a StatsReduce that adds their sums. The
// reference coefficients are the SFT-GO rules written out here (docs/loss.md), not the library's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "sftgo/core/error.h"
#include "../../src/train/step_weights.h"

namespace sftgo::train {
namespace {

using loss::GroupStats;
using loss::LossWeights;
using loss::Objective;
using loss::StatsScope;

GroupStats stats(double sum0, double sum1, int64_t n0, int64_t n1) {
  GroupStats s;
  s.loss_sum[0] = sum0;
  s.loss_sum[1] = sum1;
  s.count[0] = n0;
  s.count[1] = n1;
  return s;
}

GroupStats counts_of(const GroupStats& s) { return stats(0, 0, s.count[0], s.count[1]); }

// One rank: the identity. Several: this rank's sums plus `others` (the other ranks' sums together);
// `others_finite` is what the other ranks report about their forwards.
StatsReduce ranks(const GroupStats& others = {}, bool others_finite = true, int* calls = nullptr) {
  return [=](const GroupStats& local, bool* finite) {
    if (calls) ++*calls;
    GroupStats s = local;
    s += others;
    if (finite) *finite = *finite && others_finite;
    return s;
  };
}

// The SFT-GO rules written out: L = lambda * max(mean_0, mean_1) + (1 - lambda) * mean, both groups
// non-empty here. Tolerance: none; the same two IEEE divisions as any correct implementation.
LossWeights reference_sftgo(const GroupStats& s, double lambda) {
  LossWeights w;
  const double n = static_cast<double>(s.count[0] + s.count[1]);
  const double m0 = s.loss_sum[0] / static_cast<double>(s.count[0]);
  const double m1 = s.loss_sum[1] / static_cast<double>(s.count[1]);
  w.worst = m1 >= m0 ? 1 : 0;
  w.coef_all = (1 - lambda) / n;
  w.coef_group[w.worst] = lambda / static_cast<double>(s.count[w.worst]);
  return w;
}

void expect_same(const LossWeights& a, const LossWeights& b) {
  EXPECT_EQ(a.coef_all, b.coef_all);
  EXPECT_EQ(a.coef_group[0], b.coef_group[0]);
  EXPECT_EQ(a.coef_group[1], b.coef_group[1]);
  EXPECT_EQ(a.worst, b.worst);
}

WeightsPolicy policy(Objective o, StatsScope s, bool speculate = false) { return WeightsPolicy{o, s, speculate}; }

TEST(StepWeights, PlanFollowsScopeObjectiveMicroBatchesWorldAndStepStats) {
  const auto sftgo_step = policy(Objective::kSftGo, StatsScope::kStep);
  const auto sftgo_spec = policy(Objective::kSftGo, StatsScope::kStep, true);
  EXPECT_EQ(plan_weights(policy(Objective::kSftGo, StatsScope::kMicrobatch), 4, 2), WeightsPlan::kOwnForward);
  EXPECT_EQ(plan_weights(policy(Objective::kCe, StatsScope::kMicrobatch), 4, 2), WeightsPlan::kOwnForward);
  EXPECT_EQ(plan_weights(sftgo_step, 1, 1), WeightsPlan::kOwnForward);
  EXPECT_EQ(plan_weights(sftgo_spec, 1, 1), WeightsPlan::kOwnForward);
  EXPECT_EQ(plan_weights(sftgo_step, 4, 1), WeightsPlan::kPrePass);
  EXPECT_EQ(plan_weights(sftgo_spec, 4, 1), WeightsPlan::kSpeculate);
  EXPECT_EQ(plan_weights(sftgo_spec, 4, 2), WeightsPlan::kSpeculate);
  EXPECT_EQ(plan_weights(sftgo_step, 1, 2), WeightsPlan::kGlobalHook);
  EXPECT_EQ(plan_weights(sftgo_spec, 1, 2), WeightsPlan::kGlobalHook);  // no extra forward to save
  EXPECT_EQ(plan_weights(policy(Objective::kCe, StatsScope::kStep), 4, 1), WeightsPlan::kFromCounts);
  EXPECT_EQ(plan_weights(policy(Objective::kRho1, StatsScope::kStep), 1, 2), WeightsPlan::kFromCounts);
  EXPECT_EQ(plan_weights(policy(Objective::kCe, StatsScope::kStep), 1, 1), WeightsPlan::kOwnForward);
  // Nothing to bet on yet: the speculating policy's step takes the pre-pass.
  EXPECT_EQ(StepWeights(sftgo_spec, 0.9, 4, 1, ranks(), -1).plan(), WeightsPlan::kPrePass);
  EXPECT_EQ(StepWeights(sftgo_spec, 0.9, 4, 1, ranks(), 0).plan(), WeightsPlan::kSpeculate);
}

TEST(StepWeights, StepStatsParseAndAutoResolvesToSpeculateOnlyWhereExact) {
  EXPECT_EQ(parse_step_stats("auto"), StepStats::kAuto);
  EXPECT_EQ(parse_step_stats("prepass"), StepStats::kPrePass);
  EXPECT_EQ(parse_step_stats("speculate"), StepStats::kSpeculate);
  EXPECT_THROW(parse_step_stats("guess"), Error);
  EXPECT_TRUE(resolve_step_stats(StepStats::kAuto, false, false));
  EXPECT_FALSE(resolve_step_stats(StepStats::kAuto, true, false));  // LoRA dropout
  EXPECT_FALSE(resolve_step_stats(StepStats::kAuto, false, true));  // groups from the training forward
  EXPECT_TRUE(resolve_step_stats(StepStats::kSpeculate, true, true));
  EXPECT_FALSE(resolve_step_stats(StepStats::kPrePass, false, false));
}

// kOwnForward: each forward's own statistics decide. Both groups non-empty under sftgo with lambda > 0:
// only the forward's sums can name the worst group, so StepWeights hands out a hook that applies the
// rules to them (this forward's alone: no collective, the loss's finiteness check stays on); microbatch
// scope scales each of the M x W micro-batch objectives by 1/(M*W).
TEST(StepWeights, OwnForwardHandsOutAHookOnTheForwardsOwnStatistics) {
  const GroupStats step = stats(6.0, 5.0, 3, 2), other = stats(1.0, 4.0, 2, 2);
  for (const auto& [scope, m, w] : {std::tuple{StatsScope::kStep, size_t{1}, 1},
                                    std::tuple{StatsScope::kMicrobatch, size_t{1}, 1},
                                    std::tuple{StatsScope::kMicrobatch, size_t{4}, 2}}) {
    int calls = 0;
    StepWeights sw(policy(Objective::kSftGo, scope), 0.5, m, w, ranks({}, true, &calls));
    EXPECT_EQ(sw.plan(), WeightsPlan::kOwnForward);
    EXPECT_FALSE(sw.set_counts(counts_of(step)));
    loss::FusedLossOptions o;
    sw.configure(o, counts_of(step));
    EXPECT_FALSE(o.known_weights.has_value());
    ASSERT_TRUE(static_cast<bool>(o.weights_hook));
    EXPECT_TRUE(o.check_numerics);
    expect_same(o.weights_hook(step), reference_sftgo(step, 0.5));    // worst 0
    expect_same(o.weights_hook(other), reference_sftgo(other, 0.5));  // worst 1: the sums decide
    EXPECT_EQ(calls, 0);                                              // no collective
    EXPECT_EQ(sw.loss_scale(), scope == StatsScope::kStep ? 1.0 : 1.0 / static_cast<double>(m * w));
    expect_same(sw.metrics_weights(step), reference_sftgo(step, 0.5));
    EXPECT_FALSE(sw.confirm(step));
    if (scope == StatsScope::kMicrobatch) {
      EXPECT_EQ(sw.step_loss(step, 8.0), 8.0 / static_cast<double>(m * w));
    }
  }
}

// kOwnForward where the micro-batch's sizes decide: the coefficients go to the loss before the forward
// (known_weights, so it may take one pass), those of the rules written out, whatever the sums will be.
TEST(StepWeights, OwnForwardHandsOutTheCoefficientsTheCountsDecide) {
  struct Case {
    Objective objective;
    double lambda;
    GroupStats counts;
    LossWeights expected;
  };
  const Case cases[] = {
      {Objective::kSftGo, 0.5, stats(0, 0, 8, 0), LossWeights{0.5 / 8, {0.5 / 8, 0.0}, 0}},  // no important token
      {Objective::kSftGo, 0.5, stats(0, 0, 0, 4), LossWeights{0.5 / 4, {0.0, 0.5 / 4}, 1}},  // all important
      {Objective::kSftGo, 0.0, stats(0, 0, 5, 5), LossWeights{1.0 / 10, {0.0, 0.0}, -1}},     // lambda 0: no max
      {Objective::kSftGo, 0.5, stats(0, 0, 0, 0), LossWeights{}},                             // nothing trained
      {Objective::kCe, 0.5, stats(0, 0, 6, 2), LossWeights{1.0 / 8, {0.0, 0.0}, -1}},
      {Objective::kRho1, 0.5, stats(0, 0, 6, 2), LossWeights{0.0, {0.0, 1.0 / 2}, -1}},
      {Objective::kRho1, 0.5, stats(0, 0, 6, 0), LossWeights{}},
  };
  for (const Case& c : cases) {
    for (StatsScope scope : {StatsScope::kStep, StatsScope::kMicrobatch}) {
      // Step scope is kOwnForward for one micro-batch on one rank only; microbatch scope for any.
      const size_t m = scope == StatsScope::kStep ? 1 : 3;
      int calls = 0;
      StepWeights sw(policy(c.objective, scope), c.lambda, m, 1, ranks({}, true, &calls));
      ASSERT_EQ(sw.plan(), WeightsPlan::kOwnForward);
      sw.set_counts(c.counts);
      loss::FusedLossOptions o;
      sw.configure(o, c.counts);
      ASSERT_TRUE(o.known_weights.has_value()) << loss::objective_name(c.objective) << " lambda " << c.lambda;
      EXPECT_FALSE(static_cast<bool>(o.weights_hook));  // both would be a usage error in the loss
      EXPECT_TRUE(o.check_numerics);
      expect_same(*o.known_weights, c.expected);
      EXPECT_EQ(calls, 0);
      // The loss's one-pass choice rests on exactly these (fused_loss.cpp, one_pass_weights).
      const auto from_counts = loss::weights_from_counts(c.counts, c.lambda, c.objective);
      ASSERT_TRUE(from_counts.has_value());
      expect_same(*o.known_weights, *from_counts);
    }
  }
}

// kOwnForward with groups chosen by the forward (Rho-1's groups_hook): the sizes are only a promise and
// the groups do not exist before the forward, so the coefficients come from a hook even where the
// counts would decide.
TEST(StepWeights, OwnForwardWithAGroupsHookHandsOutAHook) {
  const GroupStats seen = stats(6.0, 5.0, 6, 2);
  for (const auto& [objective, lambda] : {std::pair{Objective::kRho1, 0.5}, std::pair{Objective::kSftGo, 0.0},
                                          std::pair{Objective::kSftGo, 0.5}}) {
    StepWeights sw(policy(objective, StatsScope::kStep), lambda, 1, 1, ranks());
    ASSERT_EQ(sw.plan(), WeightsPlan::kOwnForward);
    loss::FusedLossOptions o;
    o.groups_hook = [](const at::Tensor& token_loss) { return token_loss > 1.0f; };
    sw.configure(o, counts_of(seen));
    EXPECT_FALSE(o.known_weights.has_value());
    ASSERT_TRUE(static_cast<bool>(o.weights_hook));
    EXPECT_TRUE(o.check_numerics);
    expect_same(o.weights_hook(seen), loss::compute_loss_weights(seen, lambda, objective));
  }
  expect_same(StepWeights(policy(Objective::kRho1, StatsScope::kStep), 0.5, 1, 1, ranks()).metrics_weights(seen),
              LossWeights{0.0, {0.0, 1.0 / 2}, -1});
}

// The loss with what kOwnForward hands out against the loss left to decide on its own (as before
// StepWeights decided in this plan): the same algorithm (one pass or two), loss, gradients and
// statistics, bit for bit. Counts as the trainer's MicroBatch has them: labels != ignore_index, and the
// important ones among them.
TEST(StepWeights, OwnForwardLossIsBitIdenticalToTheLossDecidingAlone) {
  struct Case {
    Objective objective;
    double lambda;
    int64_t t;            // tokens
    double important;     // share of important tokens (0 or 1: an empty group)
    bool ignore_some;     // some labels are ignore_index
    bool groups_hook;     // groups chosen from the forward's losses
  };
  const Case cases[] = {
      {Objective::kSftGo, 0.5, 300, 0.3, false, false}, {Objective::kSftGo, 0.5, 300, 0.0, false, false},
      {Objective::kSftGo, 0.5, 40, 1.0, true, false},   {Objective::kSftGo, 0.0, 300, 0.3, false, false},
      {Objective::kSftGo, 0.0, 40, 0.3, true, false},   {Objective::kCe, 0.5, 300, 0.3, false, false},
      {Objective::kRho1, 0.5, 300, 0.3, true, false},   {Objective::kRho1, 0.5, 40, 0.0, false, false},
      {Objective::kSftGo, 0.5, 12, 0.3, true, false},   {Objective::kSftGo, 0.5, 6, 0.3, false, true},
      {Objective::kRho1, 0.5, 40, 0.3, false, true},    {Objective::kSftGo, 0.0, 40, 0.3, false, true},
  };
  const int64_t h = 16, v = 64;
  int one_pass = 0, two_pass = 0;  // both algorithms must be compared
  for (const Case& c : cases) {
    // onepass_tokens: auto (two passes at these thin blocks), or every trained token in one block.
    for (const auto& [none_trained, rows] : {std::pair{false, int64_t{0}}, std::pair{false, int64_t{1} << 20},
                                             std::pair{true, int64_t{1} << 20}}) {
      SCOPED_TRACE(::testing::Message() << loss::objective_name(c.objective) << " lambda " << c.lambda << " T "
                                        << c.t << " important " << c.important << " hook " << c.groups_hook
                                        << " none trained " << none_trained << " onepass_tokens " << rows);
      torch::manual_seed(7);
      const at::Tensor hidden0 = torch::randn({c.t, h});                  // [T, H]
      const at::Tensor weight0 = torch::randn({v, h}) * 0.3;              // [V, H]
      at::Tensor labels = torch::randint(0, v, {c.t}, torch::kLong);      // [T]
      if (c.ignore_some) labels.index_put_({torch::arange(0, c.t, 3)}, -100);
      if (none_trained) labels.fill_(-100);
      const at::Tensor groups = (torch::rand({c.t}) < c.important).to(torch::kUInt8);  // [T]
      GroupStats counts;  // as to_device counts them: trained tokens, important among them
      const at::Tensor trained = labels != -100;
      counts.count[1] = (groups.to(torch::kBool) & trained).sum().item<int64_t>();
      counts.count[0] = trained.sum().item<int64_t>() - counts.count[1];
      auto run = [&](bool configured, loss::LossInfo& info, at::Tensor& gh, at::Tensor& gw) {
        at::Tensor hidden = hidden0.clone().requires_grad_(true), weight = weight0.clone().requires_grad_(true);
        loss::FusedLossOptions o;
        o.objective = c.objective;
        o.lambda = c.lambda;
        o.onepass_tokens = rows;
        if (c.groups_hook) o.groups_hook = [&](const at::Tensor& token_loss) { return token_loss > 4.0f; };
        if (configured) {
          StepWeights sw(policy(c.objective, StatsScope::kStep), c.lambda, 1, 1, ranks());
          sw.set_counts(counts);
          sw.configure(o, counts);
          EXPECT_TRUE(o.known_weights.has_value() || static_cast<bool>(o.weights_hook));
        }
        at::Tensor l = loss::fused_group_loss(hidden, weight, labels, c.groups_hook ? at::Tensor() : groups, o, &info);
        l.backward();
        gh = hidden.grad();
        gw = weight.grad();
        return l;
      };
      loss::LossInfo alone, handed;
      at::Tensor gh0, gw0, gh1, gw1;
      const at::Tensor l0 = run(false, alone, gh0, gw0), l1 = run(true, handed, gh1, gw1);
      EXPECT_TRUE(torch::equal(l0, l1)) << l0.item<float>() << " vs " << l1.item<float>();
      EXPECT_TRUE(torch::equal(gh0, gh1));
      EXPECT_TRUE(torch::equal(gw0, gw1));
      EXPECT_EQ(alone.onepass_tokens, handed.onepass_tokens);  // the same algorithm
      ++(handed.onepass_tokens > 0 ? one_pass : two_pass);
      EXPECT_EQ(alone.metrics.loss, handed.metrics.loss);
      for (int g = 0; g < 2; ++g) {
        EXPECT_EQ(alone.local_stats.loss_sum[g], handed.local_stats.loss_sum[g]);
        EXPECT_EQ(alone.local_stats.count[g], handed.local_stats.count[g]);
        EXPECT_EQ(alone.weights.coef_group[g], handed.weights.coef_group[g]);
      }
      EXPECT_EQ(alone.weights.coef_all, handed.weights.coef_all);
      if (!c.groups_hook) {
        EXPECT_EQ(handed.local_stats.count[1], counts.count[1]);
        EXPECT_EQ(handed.local_stats.total_count(), counts.total_count());
      }
    }
  }
  EXPECT_GE(one_pass, 4);
  EXPECT_GE(two_pass, 4);
}

// Other plans decide from the step's sizes or statistics, never from one micro-batch's counts: counts
// that would decide on their own change nothing there.
TEST(StepWeights, OnlyTheOwnForwardPlanReadsTheMicroBatchCounts) {
  const GroupStats here = stats(12.0, 3.0, 6, 2), others = stats(10.0, 9.0, 5, 3);
  StepWeights hook(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 1, 2, ranks(others));
  ASSERT_EQ(hook.plan(), WeightsPlan::kGlobalHook);
  loss::FusedLossOptions o;
  hook.configure(o, stats(0, 0, 8, 0));
  EXPECT_FALSE(o.known_weights.has_value());
  ASSERT_TRUE(static_cast<bool>(o.weights_hook));
  GroupStats step = here;
  step += others;
  expect_same(o.weights_hook(here), reference_sftgo(step, 0.7));
  StepWeights ce(policy(Objective::kCe, StatsScope::kStep), 0.7, 2, 1, ranks());
  ce.set_counts(stats(0, 0, 30, 10));
  loss::FusedLossOptions c;
  ce.configure(c, stats(0, 0, 3, 1));
  ASSERT_TRUE(c.known_weights.has_value());
  EXPECT_EQ(c.known_weights->coef_all, 1.0 / 40);
}

// kFromCounts: ce and rho1 need only the group sizes, summed over the ranks before any forward.
TEST(StepWeights, FromCountsSumsTheSizesOverRanks) {
  const GroupStats here = stats(0, 0, 30, 10), others = stats(0, 0, 50, 14);
  for (int world : {1, 3}) {
    const GroupStats other = world > 1 ? others : GroupStats{};
    const double n = static_cast<double>(40 + other.total_count()), n_imp = static_cast<double>(10 + other.count[1]);
    StepWeights ce(policy(Objective::kCe, StatsScope::kStep), 0.9, 4, world, ranks(other));
    EXPECT_EQ(ce.plan(), WeightsPlan::kFromCounts);
    EXPECT_FALSE(ce.set_counts(here));
    loss::FusedLossOptions o;
    ce.configure(o, here);
    ASSERT_TRUE(o.known_weights.has_value());
    EXPECT_EQ(o.known_weights->coef_all, 1.0 / n);
    EXPECT_EQ(o.known_weights->coef_group[0] + o.known_weights->coef_group[1], 0.0);
    StepWeights rho1(policy(Objective::kRho1, StatsScope::kStep), 0.9, 4, world, ranks(other));
    rho1.set_counts(here);
    loss::FusedLossOptions r;
    rho1.configure(r, here);
    ASSERT_TRUE(r.known_weights.has_value());
    EXPECT_EQ(r.known_weights->coef_all, 0.0);
    EXPECT_EQ(r.known_weights->coef_group[1], 1.0 / n_imp);
    EXPECT_EQ(r.known_weights->coef_group[0], 0.0);
  }
}

// kPrePass: the pre-pass sums (all ranks) fix the coefficients; a non-finite forward on any rank
// leaves none and the step is not finite.
TEST(StepWeights, PrePassFixesTheStepsCoefficientsOverRanks) {
  const GroupStats here = stats(12.0, 3.0, 6, 2), others = stats(10.0, 9.0, 5, 3);
  for (int world : {1, 2}) {
    const GroupStats other = world > 1 ? others : GroupStats{};
    GroupStats step = here;
    step += other;
    StepWeights sw(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 3, world, ranks(other));
    EXPECT_EQ(sw.plan(), WeightsPlan::kPrePass);
    EXPECT_TRUE(sw.set_counts(counts_of(here)));
    sw.pre_pass_done(here, true);
    EXPECT_TRUE(sw.finite());
    loss::FusedLossOptions o;
    sw.configure(o, counts_of(here));
    ASSERT_TRUE(o.known_weights.has_value());
    expect_same(*o.known_weights, reference_sftgo(step, 0.7));
    expect_same(sw.metrics_weights(step), reference_sftgo(step, 0.7));
    EXPECT_FALSE(sw.confirm(step));
  }
  StepWeights nan_elsewhere(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 3, 2, ranks(others, false));
  nan_elsewhere.set_counts(counts_of(here));
  nan_elsewhere.pre_pass_done(here, true);
  EXPECT_FALSE(nan_elsewhere.finite());
  loss::FusedLossOptions o;
  nan_elsewhere.configure(o, counts_of(here));
  EXPECT_FALSE(o.known_weights.has_value());
}

// kSpeculate: the bet's coefficients need only the sizes; a won bet stands, a lost one hands out
// exactly what the pre-pass plan would have applied for the same statistics.
TEST(StepWeights, SpeculationKeepsAWonBetAndRedoesALostOneWithThePrePassCoefficients) {
  const GroupStats here = stats(12.0, 3.0, 6, 2), others = stats(10.0, 9.0, 5, 3);
  for (int world : {1, 2}) {
    const GroupStats other = world > 1 ? others : GroupStats{};
    GroupStats step = here;
    step += other;
    const LossWeights truth = reference_sftgo(step, 0.7);
    for (int bet : {0, 1}) {
      int calls = 0;
      StepWeights sw(policy(Objective::kSftGo, StatsScope::kStep, true), 0.7, 3, world, ranks(other, true, &calls),
                     bet);
      EXPECT_EQ(sw.plan(), WeightsPlan::kSpeculate);
      EXPECT_FALSE(sw.set_counts(counts_of(here)));  // no pre-pass
      EXPECT_EQ(calls, 1);                           // one all-reduce of the sizes
      EXPECT_TRUE(sw.speculating());
      loss::FusedLossOptions o;
      sw.configure(o, counts_of(here));
      ASSERT_TRUE(o.known_weights.has_value());
      const double n = static_cast<double>(step.total_count());
      EXPECT_EQ(o.known_weights->coef_all, (1 - 0.7) / n);  // whoever wins
      EXPECT_EQ(o.known_weights->coef_group[bet], 0.7 / static_cast<double>(step.count[bet]));
      EXPECT_EQ(o.known_weights->coef_group[1 - bet], 0.0);
      EXPECT_EQ(sw.confirm(step), bet != truth.worst) << "bet " << bet << " world " << world;
      EXPECT_FALSE(sw.speculating());
      loss::FusedLossOptions again;
      sw.configure(again, counts_of(here));
      expect_same(*again.known_weights, truth);
      expect_same(sw.metrics_weights(step), truth);
      StepWeights prepass(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 3, world, ranks(other));
      prepass.set_counts(counts_of(here));
      prepass.pre_pass_done(here, true);
      EXPECT_EQ(sw.step_loss(step, 0), prepass.step_loss(step, 0));
    }
  }
}

// The sizes alone decide (an empty group, lambda = 0): nothing to bet on, nothing to redo.
TEST(StepWeights, SpeculationWithoutABetWhereTheCountsDecide) {
  StepWeights empty(policy(Objective::kSftGo, StatsScope::kStep, true), 0.7, 2, 1, ranks(), 1);
  empty.set_counts(stats(0, 0, 8, 0));
  EXPECT_FALSE(empty.speculating());
  loss::FusedLossOptions o;
  empty.configure(o, stats(0, 0, 8, 0));
  EXPECT_EQ(o.known_weights->coef_group[0], 0.7 / 8);
  EXPECT_FALSE(empty.confirm(stats(4.0, 0, 8, 0)));
  StepWeights zero(policy(Objective::kSftGo, StatsScope::kStep, true), 0.0, 2, 1, ranks(), 1);
  zero.set_counts(stats(0, 0, 5, 5));
  EXPECT_FALSE(zero.speculating());
  EXPECT_FALSE(zero.confirm(stats(9.0, 1.0, 5, 5)));
  EXPECT_EQ(zero.metrics_weights(stats(9.0, 1.0, 5, 5)).worst, 0);  // named from the means, as the pre-pass
}

// kGlobalHook: one micro-batch on several ranks. The hook all-reduces the forward's own statistics;
// every rank must reach it, so the loss's local finiteness check is off and a NaN anywhere yields
// NaN coefficients (the trainer then skips the step on every rank).
TEST(StepWeights, GlobalHookAllReducesTheForwardsStatistics) {
  const GroupStats here = stats(12.0, 3.0, 6, 2), others = stats(10.0, 9.0, 5, 3);
  GroupStats step = here;
  step += others;
  StepWeights sw(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 1, 2, ranks(others));
  EXPECT_EQ(sw.plan(), WeightsPlan::kGlobalHook);
  EXPECT_FALSE(sw.set_counts(counts_of(here)));
  loss::FusedLossOptions o;
  sw.configure(o, counts_of(here));
  EXPECT_FALSE(o.known_weights.has_value());
  ASSERT_TRUE(static_cast<bool>(o.weights_hook));
  EXPECT_FALSE(o.check_numerics);
  expect_same(o.weights_hook(here), reference_sftgo(step, 0.7));
  expect_same(sw.metrics_weights(step), reference_sftgo(step, 0.7));
  StepWeights nan(policy(Objective::kSftGo, StatsScope::kStep), 0.7, 1, 2, ranks(stats(NAN, 0, 1, 0)));
  loss::FusedLossOptions n;
  nan.configure(n, counts_of(here));
  EXPECT_TRUE(std::isnan(n.weights_hook(here).coef_all));
}

}  // namespace
}  // namespace sftgo::train
