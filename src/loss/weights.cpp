// Group statistics -> loss coefficients and metrics; lambda schedules. No LibTorch: cheap to build
// and usable by the trainer after an all-reduce of GroupStats.
#include <algorithm>
#include <cmath>

#include "sftgo/core/error.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::loss {

Objective parse_objective(const std::string& name) {
  if (name == "sftgo") return Objective::kSftGo;
  if (name == "ce") return Objective::kCe;
  if (name == "rho1") return Objective::kRho1;
  SFTGO_FAIL_HINT(ErrorKind::kConfig, "use one of: sftgo, ce, rho1", "unknown loss objective '", name, "'");
}

const char* objective_name(Objective objective) {
  switch (objective) {
    case Objective::kSftGo: return "sftgo";
    case Objective::kCe: return "ce";
    case Objective::kRho1: return "rho1";
  }
  return "?";
}

StatsScope parse_stats_scope(const std::string& name) {
  if (name == "microbatch") return StatsScope::kMicrobatch;
  if (name == "step") return StatsScope::kStep;
  SFTGO_FAIL_HINT(ErrorKind::kConfig, "use one of: microbatch, step", "unknown loss stats scope '", name, "'");
}

const char* stats_scope_name(StatsScope scope) { return scope == StatsScope::kMicrobatch ? "microbatch" : "step"; }

double lambda_static(double lambda) { return lambda; }

double lambda_linear_decay(double lambda_max, double lambda_min, int64_t step, int64_t total_steps) {
  if (total_steps <= 0) return lambda_max;
  const double t = static_cast<double>(std::clamp<int64_t>(step, 0, total_steps));
  return lambda_max - (lambda_max - lambda_min) * t / static_cast<double>(total_steps);
}

GroupStats& GroupStats::operator+=(const GroupStats& other) {
  for (int g = 0; g < 2; ++g) {
    loss_sum[g] += other.loss_sum[g];
    count[g] += other.count[g];
  }
  return *this;
}

LossWeights compute_loss_weights(const GroupStats& stats, double lambda, Objective objective) {
  SFTGO_CHECK(stats.count[0] >= 0 && stats.count[1] >= 0, ErrorKind::kInternal, "GroupStats has negative counts (",
              stats.count[0], ", ", stats.count[1], ")");
  LossWeights w;
  const int64_t n = stats.total_count();
  switch (objective) {
    case Objective::kCe:
      if (n > 0) w.coef_all = 1.0 / static_cast<double>(n);
      return w;
    case Objective::kRho1:
      if (stats.count[1] > 0) w.coef_group[1] = 1.0 / static_cast<double>(stats.count[1]);
      return w;
    case Objective::kSftGo: break;
  }
  SFTGO_CHECK_HINT(lambda >= 0.0 && lambda <= 1.0, ErrorKind::kConfig, "set loss.lambda within [0, 1]",
                   "SFT-GO lambda must lie in [0, 1], got ", lambda);
  if (n == 0) return w;  // no trained tokens: L = 0, zero gradient
  // An empty group takes no part in the max; on an exact tie the important group (1) is worst.
  int worst = 1;
  if (stats.count[0] == 0) {
    worst = 1;
  } else if (stats.count[1] == 0) {
    worst = 0;
  } else {
    const double mean0 = stats.loss_sum[0] / static_cast<double>(stats.count[0]);
    const double mean1 = stats.loss_sum[1] / static_cast<double>(stats.count[1]);
    worst = mean1 >= mean0 ? 1 : 0;
  }
  return sftgo_weights_for_worst(stats, lambda, worst);
}

LossWeights sftgo_weights_for_worst(const GroupStats& counts, double lambda, int worst) {
  SFTGO_CHECK(worst == 0 || worst == 1, ErrorKind::kInternal, "worst group must be 0 or 1, got ", worst);
  LossWeights w;
  const int64_t n = counts.total_count();
  if (n == 0) return w;  // no trained tokens: L = 0, zero gradient
  w.coef_all = (1.0 - lambda) / static_cast<double>(n);
  w.worst = worst;
  if (counts.count[worst] > 0) w.coef_group[worst] = lambda / static_cast<double>(counts.count[worst]);
  return w;
}

std::optional<LossWeights> weights_from_counts(const GroupStats& counts, double lambda, Objective objective) {
  GroupStats c;  // counts only: every loss sum 0, so nothing below can depend on the losses
  c.count[0] = counts.count[0];
  c.count[1] = counts.count[1];
  if (objective == Objective::kSftGo && lambda != 0.0 && c.count[0] > 0 && c.count[1] > 0) {
    return std::nullopt;  // the worst group needs both group means
  }
  LossWeights w = compute_loss_weights(c, lambda, objective);
  // lambda = 0 with two groups: the tie rule above named a worst group from zero sums; its
  // coefficient is lambda / N_worst = 0, so the choice carries no information. Say so.
  if (objective == Objective::kSftGo && lambda == 0.0 && c.count[0] > 0 && c.count[1] > 0) w.worst = -1;
  return w;
}

LossMetrics compute_loss_metrics(const GroupStats& stats, const LossWeights& weights, double lambda) {
  LossMetrics m;
  const int64_t n = stats.total_count();
  m.loss = weights.coef_all * stats.total_loss() + weights.coef_group[0] * stats.loss_sum[0] +
           weights.coef_group[1] * stats.loss_sum[1];
  m.loss_ce = n > 0 ? stats.total_loss() / static_cast<double>(n) : 0.0;
  m.loss_unimp = stats.count[0] > 0 ? stats.loss_sum[0] / static_cast<double>(stats.count[0]) : 0.0;
  m.loss_imp = stats.count[1] > 0 ? stats.loss_sum[1] / static_cast<double>(stats.count[1]) : 0.0;
  m.worst = weights.worst;
  m.count_unimp = stats.count[0];
  m.count_imp = stats.count[1];
  m.lambda = lambda;
  return m;
}

}  // namespace sftgo::loss
