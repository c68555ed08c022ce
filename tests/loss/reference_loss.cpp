// The loss test oracle (see reference_loss.h).
#include "reference_loss.h"

#include <cmath>

#include <ATen/ATen.h>

#include "sftgo/core/error.h"

namespace sftgo::loss {
namespace {

// The input that carries the NaN/Inf, named as the fused path names it (tests check both).
[[noreturn]] void fail_non_finite(double loss_sum, const at::Tensor& hidden, const at::Tensor& weight) {
  const char* culprit = !at::isfinite(hidden).all().item<bool>()   ? "hidden [T, H] contains NaN/Inf"
                        : !at::isfinite(weight).all().item<bool>() ? "lm_head weight [V, H] contains NaN/Inf"
                                                                   : "the logits overflowed (inputs are finite)";
  SFTGO_FAIL(ErrorKind::kNumeric, "reference_group_loss: non-finite loss (sum of token losses = ", loss_sum,
             "): ", culprit);
}

}  // namespace

at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info,
                                at::ScalarType compute_dtype) {
  SFTGO_CHECK(compute_dtype == at::kFloat || compute_dtype == at::kDouble, ErrorKind::kInternal,
              "reference_group_loss: compute dtype must be float32 or float64");
  const int64_t vocab = weight.size(0);
  const at::Tensor logits = at::matmul(hidden.to(compute_dtype), weight.to(compute_dtype).t());  // [T, V]
  const at::Tensor logp = at::log_softmax(logits, 1);                                            // [T, V]
  const at::Tensor trained = labels != options.ignore_index;                                     // [T]
  const at::Tensor safe_labels = at::where(trained, labels, at::zeros_like(labels));
  if (trained.any().item<bool>()) {
    const at::Tensor picked = labels.masked_select(trained);
    SFTGO_CHECK(picked.min().item<int64_t>() >= 0 && picked.max().item<int64_t>() < vocab, ErrorKind::kData,
                "loss: labels [T] must be in [0, V = ", vocab, ") or ", options.ignore_index);
  }
  // Per-token CE in double so that the oracle's own rounding stays far below the tolerances.
  const at::Tensor ce = -logp.gather(1, safe_labels.unsqueeze(1)).squeeze(1).to(at::kDouble);  // [T]
  const at::Tensor m_all = trained.to(at::kDouble);
  at::Tensor used_groups = groups;  // [T]
  if (options.groups_hook) {
    const double sum = (ce.detach() * m_all).sum().item<double>();
    if (options.check_numerics && !std::isfinite(sum)) fail_non_finite(sum, hidden, weight);
    used_groups = options.groups_hook((ce.detach() * m_all).to(at::kFloat));  // [T], 0 at ignored positions
    SFTGO_CHECK(used_groups.defined() && used_groups.dim() == 1 && used_groups.size(0) == labels.size(0),
                ErrorKind::kUsage, "loss: groups_hook must return groups [T] with T = ", labels.size(0));
  }
  at::Tensor m1 = at::zeros_like(m_all);
  // Objective ce keeps group statistics whenever groups are given (metrics only: its weights ignore them).
  if (used_groups.defined()) m1 = (used_groups.to(at::kBool) & trained).to(at::kDouble);
  const at::Tensor m0 = m_all - m1;

  GroupStats stats;
  {
    const at::Tensor ced = ce.detach();
    stats.loss_sum[0] = (ced * m0).sum().item<double>();
    stats.loss_sum[1] = (ced * m1).sum().item<double>();
    stats.count[0] = static_cast<int64_t>(m0.sum().item<double>());
    stats.count[1] = static_cast<int64_t>(m1.sum().item<double>());
  }
  if (options.check_numerics && !std::isfinite(stats.total_loss())) fail_non_finite(stats.total_loss(), hidden, weight);
  const int64_t n = stats.total_count();
  const at::Tensor zero = (ce * 0.0).sum();  // keeps the graph so backward gives zero gradients
  at::Tensor result;
  LossWeights w;
  if (options.weights_hook || options.known_weights) {
    w = options.known_weights ? *options.known_weights : options.weights_hook(stats);
    SFTGO_CHECK(std::isfinite(w.coef_all) && std::isfinite(w.coef_group[0]) && std::isfinite(w.coef_group[1]),
                ErrorKind::kNumeric, "reference_group_loss: non-finite loss weights");
    result = (ce * (w.coef_all * m_all + w.coef_group[0] * m0 + w.coef_group[1] * m1)).sum();
  } else {
    w = compute_loss_weights(stats, options.lambda, options.objective);
    const auto masked_mean = [&](const at::Tensor& m, int64_t count) { return (ce * m).sum() / double(count); };
    switch (options.objective) {
      case Objective::kCe: result = n > 0 ? masked_mean(m_all, n) : zero; break;
      case Objective::kRho1: result = stats.count[1] > 0 ? masked_mean(m1, stats.count[1]) : zero; break;
      case Objective::kSftGo: {
        if (n == 0) {
          result = zero;
          break;
        }
        // The max written out, independent of compute_loss_weights: empty groups are left out,
        // a tie goes to the important group.
        const double lambda = options.lambda;
        at::Tensor worst_mean;
        if (stats.count[0] == 0) {
          worst_mean = masked_mean(m1, stats.count[1]);
        } else if (stats.count[1] == 0) {
          worst_mean = masked_mean(m0, stats.count[0]);
        } else {
          const at::Tensor mean0 = masked_mean(m0, stats.count[0]);
          const at::Tensor mean1 = masked_mean(m1, stats.count[1]);
          worst_mean = mean1.item<double>() >= mean0.item<double>() ? mean1 : mean0;
        }
        result = lambda * worst_mean + (1.0 - lambda) * masked_mean(m_all, n);
        break;
      }
    }
  }
  if (info != nullptr) {
    info->local_stats = stats;
    info->weights = w;
    info->metrics = compute_loss_metrics(stats, w, options.lambda);
    info->chunk_vocab = weight.size(0);
  }
  return result.to(at::kFloat);
}

at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  return reference_group_loss(hidden, weight, labels, groups, options, info, at::kFloat);
}

}  // namespace sftgo::loss
