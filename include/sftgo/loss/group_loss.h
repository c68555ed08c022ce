// SFT-GO group-optimised loss: per-token CE split into an important (g=1) and an unimportant (g=0)
// group, L = lambda * max(L_imp, L_unimp) + (1 - lambda) * L_CE (see docs/loss.md).
//
// The loss is written as a weighted sum of per-token CE, L = sum_i w_i * l_i with
//   w_i = coef_all + coef_group[g_i],
// where the coefficients come from group statistics (sums and counts) that may cover only this
// forward (scope "microbatch") or the whole optimizer step across micro-batches and ranks ("step").
// The trainer owns the statistics plumbing through FusedLossOptions::weights_hook.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace sftgo::loss {

enum class Objective {
  kSftGo,  // lambda * max(group means) + (1 - lambda) * mean CE
  kCe,     // plain SFT: mean CE over trained tokens (lambda ignored; group statistics kept when groups are given)
  kRho1,   // mean CE over important tokens only (Rho-1 style selective training)
};

enum class StatsScope { kMicrobatch, kStep };

// Parses "sftgo" | "ce" | "rho1" and "microbatch" | "step"; throws sftgo::Error(kConfig) otherwise.
Objective parse_objective(const std::string& name);
const char* objective_name(Objective objective);
StatsScope parse_stats_scope(const std::string& name);
const char* stats_scope_name(StatsScope scope);

// lambda schedules (pure). Linear decay is paper Eq. 5: lambda_t = max - (max - min) * t / T,
// with t clamped to [0, T]; T <= 0 yields lambda_max.
double lambda_static(double lambda);
double lambda_linear_decay(double lambda_max, double lambda_min, int64_t step, int64_t total_steps);

// Sufficient statistics of the per-token CE of trained tokens, per group (0 = unimportant,
// 1 = important). Sums are double and counts int64 so they can be summed over micro-batches and
// all-reduced across ranks without loss; for kCe only the totals matter (see fused loss).
struct GroupStats {
  double loss_sum[2] = {0.0, 0.0};
  int64_t count[2] = {0, 0};

  double total_loss() const { return loss_sum[0] + loss_sum[1]; }
  int64_t total_count() const { return count[0] + count[1]; }
  GroupStats& operator+=(const GroupStats& other);
};

// Per-token gradient coefficients: w_i = coef_all + coef_group[g_i]. worst is the group whose mean
// enters the max (-1 when it does not apply: objective ce/rho1 or no tokens).
struct LossWeights {
  double coef_all = 0.0;
  double coef_group[2] = {0.0, 0.0};
  int worst = -1;
};

// What the trainer logs. Means of empty groups are reported as 0 with their count 0.
struct LossMetrics {
  double loss = 0.0;        // the objective value sum_i w_i * l_i under the given stats
  double loss_ce = 0.0;     // mean CE over all trained tokens
  double loss_imp = 0.0;    // mean CE over important tokens
  double loss_unimp = 0.0;  // mean CE over unimportant tokens
  int worst = -1;           // see LossWeights::worst
  int64_t count_imp = 0;
  int64_t count_unimp = 0;
  double lambda = 0.0;
};

// The SFT-GO rules, in one place:
//  * sftgo: mean_g = loss_sum[g] / count[g] for non-empty groups. worst = the group with the larger
//    mean; on an exact tie the important group (1) is worst (deterministic, and it favours the
//    tokens the method exists for). An empty group takes no part in the max, so with one empty group
//    the max is the other group's mean; with no tokens at all every coefficient is 0 (L = 0, zero
//    gradient). coef_all = (1 - lambda) / N, coef_group[worst] = lambda / N_worst.
//  * ce: coef_all = 1 / N (0 when N = 0).  * rho1: coef_group[1] = 1 / N_imp (0 when N_imp = 0).
// lambda must lie in [0, 1] (sftgo only); throws sftgo::Error(kConfig) otherwise.
LossWeights compute_loss_weights(const GroupStats& stats, double lambda, Objective objective);
// The sftgo coefficients once the worst group is known: coef_all = (1 - lambda) / N, coef_group[worst]
// = lambda / N_worst (0 when that group is empty). Only the counts are read. compute_loss_weights
// applies exactly this, so a trainer that bets on `worst` before the forward (loss.step_stats:
// speculate) applies bit for bit the coefficients the step's statistics give when the bet holds.
LossWeights sftgo_weights_for_worst(const GroupStats& counts, double lambda, int worst);
// Metrics for given stats and weights (loss = sum of coefficients times sums).
LossMetrics compute_loss_metrics(const GroupStats& stats, const LossWeights& weights, double lambda);

// The weights when they follow from the token counts alone, before any loss is known: objectives ce and
// rho1, and sftgo with lambda = 0, with an empty group or with no tokens (then the worst group, or
// its coefficient, does not depend on the group means). nullopt otherwise. `counts` needs only
// count[]; its loss sums are not read. The coefficients equal compute_loss_weights(stats, ...) for
// any stats with these counts (`worst` is -1 for sftgo with lambda = 0 and two non-empty groups).
std::optional<LossWeights> weights_from_counts(const GroupStats& counts, double lambda, Objective objective);

// Called once per forward with this forward's local stats; returns the weights to apply. A step-scope
// trainer sums/all-reduces stats here (or returns weights from precomputed step stats). A hook that
// ignores its argument is better given as FusedLossOptions::known_weights (one pass, see below).
using WeightsHook = std::function<LossWeights(const GroupStats& local)>;

// Called once per forward with the per-token CE the forward has just computed; returns the groups to
// use for this forward's statistics, weights and gradient (Rho-1: the top-k% excess loss, chosen
// from the training forward itself instead of a second forward of the model).
//   token_loss [T] fp32, detached, on hidden's device; 0 at ignored positions; finite when
//              check_numerics is on (the non-finite error is raised before the hook is called)
//   returns    [T] bool/int8/uint8 on the same device, non-zero = important (ignored positions
//              never count)
using GroupsHook = std::function<at::Tensor(const at::Tensor& token_loss)>;

// How the gradient is produced (docs/loss.md, "One pass or two").
enum class LossPass {
  // One pass when a gradient is needed, the coefficients are known before the forward
  // (known_weights, or weights_from_counts without a weights_hook and groups_hook) and a token block
  // has >= 256 rows or holds every trained token (thinner blocks are slower than two passes); two
  // passes otherwise.
  kAuto,
  // Backward-in-forward: logits, CE and the scaled softmax - onehot of a block of tokens, then both
  // gradient GEMMs, in the forward (3 LM-head GEMMs). sftgo::Error(kUsage) when the coefficients are
  // not known before the forward.
  kOnePass,
  // Forward over vocabulary blocks, then a backward that recomputes the logits (4 GEMMs).
  kTwoPass,
};

struct FusedLossOptions {
  Objective objective = Objective::kSftGo;
  double lambda = 0.5;
  // Empty: weights from this forward's own stats (microbatch scope).
  WeightsHook weights_hook;
  // The coefficients, fixed before the forward (step scope once the step's statistics are known, e.g.
  // after the trainer's stats pre-pass): no hook is called and the loss can take one pass. Setting
  // both this and weights_hook is a usage error.
  std::optional<LossWeights> known_weights;
  // Groups chosen from this forward's per-token losses (see GroupsHook); replaces the `groups`
  // argument, which may then be undefined. Needs the two-pass path; not allowed with objective ce.
  GroupsHook groups_hook;
  LossPass pass = LossPass::kAuto;
  // One-pass path: trained tokens per block (each block holds its [rows, V] logits in the input
  // dtype); 0 = auto (all temporaries <= 10% of the fp32 [T, V] logits, at least 16 rows).
  int64_t onepass_tokens = 0;
  // Vocabulary columns per logits block; 0 = auto (all temporaries <= 10% of the fp32 [T, V] logits,
  // at least 256 columns).
  int64_t chunk_vocab = 0;
  // Trained tokens per pass over the vocabulary; 0 = all at once (default, widest GEMMs). Set it only
  // to cap the [rows, Vb] buffer for very long micro-batches.
  int64_t chunk_tokens = 0;
  // The weight is a leaf used by nothing else in the graph (an untied LM head, no cast in between):
  // the two-pass backward then adds its [V, H] gradient block by block into weight.grad() when that
  // already holds a gradient no other tensor shares, and hands that tensor back as the gradient
  // (AccumulateGrad takes it and runs its hooks as usual). Saves the second [V, H] buffer of every
  // micro-batch after the first; the sums are bit for bit those of AccumulateGrad's `grad += new`.
  // Not for a tied weight: its other gradient would be added in a different order.
  bool accumulate_into_grad = false;
  // One reduction over the per-token losses; raises sftgo::Error(kNumeric) on NaN/Inf.
  bool check_numerics = true;
  int64_t ignore_index = -100;
};

// Filled by the loss functions when non-null; describes the forward just run.
struct LossInfo {
  GroupStats local_stats;      // this forward's stats
  LossWeights weights;         // the weights applied (from local stats or the hook)
  LossMetrics metrics;         // local stats under the applied weights (metrics.loss = returned value);
                               // step-wide metrics: compute_loss_metrics(step_stats, weights, lambda)
  int64_t chunk_vocab = 0;     // vocabulary block width used (two-pass; V for one pass)
  int64_t onepass_tokens = 0;  // tokens per block of the one-pass path; 0 when it did not run
};

// Throws sftgo::Error(kConfig) when the fused loss cannot run on `device`: anything but the CPU or
// CUDA, or CUDA in a build without the CUDA row kernels (no nvcc at configure time). The trainer calls
// it in set-up, so such a run stops before loading data and models, not at the first loss.
void check_device_supported(c10::Device device);
bool cuda_kernels_built();  // the CUDA row kernels are compiled in (SFTGO_LOSS_CUDA)

// Fused LM head + SFT-GO loss. Returns a 0-dim fp32 tensor sum_i w_i * l_i; backward() yields the
// SFT-GO gradient for hidden and weight (either may require grad; a tied weight accumulates).
//   hidden  [T, H] fp32 or bf16 (CPU or CUDA)
//   weight  [V, H] same dtype and device (the LM head, possibly the tied embedding)
//   labels  [T] int64, options.ignore_index marks tokens not trained
//   groups  [T] bool/int8/uint8, non-zero = important; ignored where the label is ignored. May be
//           undefined for objective ce.
// The [T, V] logits never exist in full: see docs/loss.md for the one-pass token-blocked and the two-pass
// vocabulary-blocked algorithms and when each runs (FusedLossOptions::pass).
at::Tensor fused_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                            const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info = nullptr);

}  // namespace sftgo::loss
