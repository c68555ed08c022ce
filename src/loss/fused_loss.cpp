// Fused LM head + SFT-GO loss (CPU and CUDA): the entry point. Its test oracle, the materialised
// reference, is tests/loss/reference_loss.cpp.
//
// Two algorithms, one file each, each its own autograd Function:
//   two_pass.cpp: two passes with recomputation, blocked over the vocabulary (the general case);
//   one_pass.cpp: backward-in-forward (Liger style), blocked over tokens, when the per-token
//                 coefficients are known before the forward.
// This file validates the inputs, compacts the trained tokens, picks the algorithm and holds the
// pieces both share (fused_loss_impl.h). The row kernels they run (CPU loops or CUDA) are in
// src/kernels (sftgo/kernels/row_softmax_dispatch.h).
//
// Choice: one pass when a gradient is needed and the coefficients are known before the forward -
// objective ce, rho1 with static groups, sftgo with lambda = 0 or an empty group (weights_from_counts),
// or step scope once the trainer knows the step's statistics (options.known_weights) - and, for
// pass kAuto, its token blocks are wide enough (kOnePassMinRows). Two passes otherwise: the SFT-GO
// gradient of a token depends on which group is worst and on N_worst, known only after *all* tokens
// of the forward (two_pass.cpp says why no per-group accumulator is kept instead). A groups_hook
// (Rho-1) always takes two passes: the groups, hence the coefficients, come from this forward's losses.
#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "fused_loss_impl.h"
#include "sftgo/core/error.h"
#include "sftgo/loss/group_loss.h"

#ifdef SFTGO_LOSS_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace sftgo::loss {
namespace detail {

std::string sizes_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Raised when the loss sum is not finite; names the input that carries the NaN/Inf (the diagnosis
// reductions run only on this failure path).
[[noreturn]] void fail_numeric(const char* where, double loss_sum, const at::Tensor& hidden, const at::Tensor& weight) {
  std::string culprit = "the logits overflowed (inputs are finite)";
  if (!at::isfinite(hidden).all().item<bool>()) {
    culprit = "hidden [T, H] contains NaN/Inf";
  } else if (!at::isfinite(weight).all().item<bool>()) {
    culprit = "lm_head weight [V, H] contains NaN/Inf";
  }
  SFTGO_FAIL_HINT(ErrorKind::kNumeric, "lower the learning rate or enable gradient clipping; check the data", where,
                  ": non-finite loss (sum of token losses = ", loss_sum, "): ", culprit);
}

// d hidden = G @ W reduces over K = vocabulary columns. The CPU BLAS of the LibTorch wheel (MKL sgemm)
// runs a thread's share of fewer than 4 rows through a kernel that sums all K products of a row in
// one fp32 chain; with K = 128256 and the label's -w * W[label] term in that chain, the 1e-6-sized
// softmax terms lose their low bits: 7.8e-5 relative error at T = 9 on 2 threads, where 4+ rows per
// thread give 4e-7 (docs/loss.md, "Thin blocks"). PyTorch's own fp32 autograd takes the same kernel.
// Thin blocks therefore sum the product over vocabulary slices into a scratch and add the slices
// (chains 64x shorter); blocks of real batches (hundreds of rows) keep one GEMM.
constexpr int64_t kThinRowsPerThread = 4;
constexpr int64_t kThinSliceCols = 2048;

// out [nr, H] = g [nr, K] @ w [K, H], or out += g @ w when accumulate.
void grad_hidden_mm(at::Tensor& out, const at::Tensor& g, const at::Tensor& w, bool accumulate) {
  const int64_t nr = g.size(0);
  const int64_t k = g.size(1);
  const bool thin = g.is_cpu() && g.scalar_type() == at::kFloat && k > kThinSliceCols &&
                    nr < kThinRowsPerThread * static_cast<int64_t>(at::get_num_threads());
  if (!thin) {
    if (accumulate) {
      out.addmm_(g, w);
    } else {
      at::mm_out(out, g, w);
    }
    return;
  }
  if (!accumulate) out.zero_();
  at::Tensor part = at::empty_like(out);  // [nr, H], a few rows
  for (int64_t k0 = 0; k0 < k; k0 += kThinSliceCols) {
    const int64_t kb = std::min(kThinSliceCols, k - k0);
    at::mm_out(part, g.narrow(1, k0, kb), w.narrow(0, k0, kb));
    out.add_(part);
  }
}

// Local stats from per-token CE [N] fp32 (and groups [N] bool): one small device->host copy.
GroupStats local_stats(const at::Tensor& loss, const at::Tensor& groups, int64_t n) {
  GroupStats s;
  if (n == 0) return s;
  const at::Tensor loss64 = loss.to(at::kDouble);
  if (!groups.defined()) {  // objective ce without groups: everything counts as group 0
    s.loss_sum[0] = loss64.sum().item<double>();
    s.count[0] = n;
    return s;
  }
  const at::Tensor g64 = groups.to(at::kDouble);
  const at::Tensor packed = at::stack({(loss64 * (1.0 - g64)).sum(), (loss64 * g64).sum(), g64.sum()}).cpu();
  const double* p = packed.const_data_ptr<double>();
  s.loss_sum[0] = p[0];
  s.loss_sum[1] = p[1];
  s.count[1] = static_cast<int64_t>(p[2]);
  s.count[0] = n - s.count[1];
  return s;
}

// w_i = coef_all + coef_group[g_i] per trained token: [N] fp32.
at::Tensor row_weights(const LossWeights& w, const at::Tensor& groups, int64_t n, const at::TensorOptions& opts) {
  if (!groups.defined()) return at::full({n}, w.coef_all + w.coef_group[0], opts);
  return at::where(groups, w.coef_all + w.coef_group[1], w.coef_all + w.coef_group[0]).to(opts);
}

}  // namespace detail

namespace {

using detail::Call;
using detail::sizes_str;
using detail::Trained;

void validate_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                     const at::Tensor& groups, const FusedLossOptions& options) {
  SFTGO_CHECK(hidden.defined() && hidden.dim() == 2, ErrorKind::kModel, "loss: hidden must be [T, H], got ",
              hidden.defined() ? sizes_str(hidden) : "undefined");
  const int64_t t = hidden.size(0);
  const int64_t h = hidden.size(1);
  SFTGO_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) == h, ErrorKind::kModel,
              "loss: lm_head weight must be [V, H] with H = ", h, ", got ",
              weight.defined() ? sizes_str(weight) : "undefined");
  SFTGO_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kBFloat16, ErrorKind::kModel,
              "loss: hidden [T, H] must be float32 or bfloat16, got ", hidden.scalar_type());
  SFTGO_CHECK(weight.scalar_type() == hidden.scalar_type(), ErrorKind::kModel, "loss: lm_head weight [V, H] dtype ",
              weight.scalar_type(), " differs from hidden dtype ", hidden.scalar_type());
  SFTGO_CHECK(weight.device() == hidden.device(), ErrorKind::kModel, "loss: lm_head weight is on ", weight.device(),
              " but hidden is on ", hidden.device());
  SFTGO_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == t && labels.scalar_type() == at::kLong,
              ErrorKind::kData, "loss: labels must be int64 [T] with T = ", t, ", got ",
              labels.defined() ? sizes_str(labels) : "undefined", " ",
              labels.defined() ? c10::toString(labels.scalar_type()) : "");
  SFTGO_CHECK(labels.device() == hidden.device(), ErrorKind::kData, "loss: labels [T] are on ", labels.device(),
              " but hidden is on ", hidden.device());
  SFTGO_CHECK(!(options.known_weights && options.weights_hook), ErrorKind::kUsage,
              "loss: set either known_weights or weights_hook, not both");
  SFTGO_CHECK(!(options.groups_hook && options.pass == LossPass::kOnePass), ErrorKind::kUsage,
              "loss: groups_hook needs the two-pass path (the groups come from this forward's losses); "
              "pass must be auto or two-pass");
  if (options.known_weights) {
    const LossWeights& k = *options.known_weights;
    SFTGO_CHECK(std::isfinite(k.coef_all) && std::isfinite(k.coef_group[0]) && std::isfinite(k.coef_group[1]),
                ErrorKind::kNumeric, "loss: known_weights has non-finite coefficients (", k.coef_all, ", ",
                k.coef_group[0], ", ", k.coef_group[1], ")");
  }
  if ((options.objective != Objective::kCe && !options.groups_hook) || groups.defined()) {
    SFTGO_CHECK(groups.defined() && groups.dim() == 1 && groups.size(0) == t, ErrorKind::kData,
                "loss: groups must be [T] with T = ", t, " (objective ", objective_name(options.objective), "), got ",
                groups.defined() ? sizes_str(groups) : "undefined");
    const auto gt = groups.scalar_type();
    SFTGO_CHECK(gt == at::kBool || gt == at::kChar || gt == at::kByte, ErrorKind::kData,
                "loss: groups [T] must be bool, int8 or uint8, got ", gt);
    SFTGO_CHECK(groups.device() == hidden.device(), ErrorKind::kData, "loss: groups [T] are on ", groups.device(),
                " but hidden is on ", hidden.device());
  }
}

Trained select_trained(const at::Tensor& hidden, const at::Tensor& labels, const at::Tensor& groups,
                       const FusedLossOptions& options, int64_t vocab) {
  Trained tr;
  const at::Tensor mask = labels != options.ignore_index;  // [T]
  const int64_t t = labels.size(0);
  // Objective ce keeps per-group statistics too when groups are given (the paper's Figure 1 is the group
  // losses under plain SFT); its coefficients are the same for both groups, so its gradient is unchanged.
  const bool need_groups = groups.defined();  // else: groups_hook, or ce without groups
  // The trained count, the trained labels' range and the important count come back in one device ->
  // host copy (each .item() would be a separate sync with a GPU). Integers: the same on every device.
  int64_t lo = 0, hi = 0;
  if (t > 0) {
    std::vector<at::Tensor> parts{mask.sum(), at::where(mask, labels, std::numeric_limits<int64_t>::max()).min(),
                                  at::where(mask, labels, std::numeric_limits<int64_t>::min()).max()};
    if (need_groups) parts.push_back(groups.to(at::kBool).logical_and(mask).sum());
    const at::Tensor packed = at::stack(parts).cpu();  // [3 or 4] int64
    const int64_t* p = packed.const_data_ptr<int64_t>();
    tr.n = p[0];
    lo = p[1];
    hi = p[2];
    if (need_groups) tr.important = p[3];
  }
  if (tr.n == t) {
    tr.hidden = hidden.contiguous();
    tr.labels = labels.contiguous();
    if (need_groups) tr.groups = groups.to(at::kBool).contiguous();
  } else {
    tr.rows = mask.nonzero().squeeze(1);
    tr.labels = labels.index_select(0, tr.rows);
    if (need_groups) tr.groups = groups.index_select(0, tr.rows).to(at::kBool);
  }
  if (tr.n > 0) {
    SFTGO_CHECK(lo >= 0 && hi < vocab, ErrorKind::kData, "loss: labels [T] must be in [0, V = ", vocab, ") or ",
                options.ignore_index, ", found values in [", lo, ", ", hi, "]");
  }
  return tr;
}

// Counts of the trained tokens per group (one small device->host copy).
GroupStats count_groups(const Trained& tr) {
  GroupStats c;
  if (tr.important >= 0) {
    c.count[1] = tr.important;  // counted in select_trained's single copy
  } else {
    c.count[1] = tr.groups.defined() && tr.n > 0 ? tr.groups.sum().item<int64_t>() : 0;
  }
  c.count[0] = tr.n - c.count[1];
  return c;
}

// The coefficients for the one-pass algorithm, or nothing for two passes. Coefficients before the
// forward are given by the caller or follow from the counts alone; one pass then runs when a gradient
// is needed, some coefficient is non-zero and (kAuto) its token blocks are wide enough to beat the
// fourth GEMM of two passes (see kOnePassMinRows); kOnePass: always.
std::optional<LossWeights> one_pass_weights(const at::Tensor& hidden, const at::Tensor& weight, const Call& call) {
  const FusedLossOptions& options = *call.options;
  const Trained& tr = call.trained;
  const int64_t n = tr.n;
  std::optional<LossWeights> ahead;
  if (!options.groups_hook) {
    if (options.known_weights) {
      ahead = options.known_weights;
    } else if (!options.weights_hook) {
      ahead = weights_from_counts(count_groups(tr), options.lambda, options.objective);
    }
  }
  const bool need_grad = call.need_h || call.need_w;
  SFTGO_CHECK_HINT(options.pass != LossPass::kOnePass || !need_grad || ahead.has_value(), ErrorKind::kUsage,
                   "use pass auto, or give known_weights",
                   "loss: one pass requested but the coefficients are not known before the forward (objective ",
                   objective_name(options.objective), ", lambda ", options.lambda,
                   options.weights_hook ? ", weights_hook set" : "", ")");
  if (need_grad && n > 0 && ahead && !detail::all_zero(*ahead) && options.pass != LossPass::kTwoPass) {
    const int64_t c = detail::choose_onepass_rows(options.onepass_tokens, hidden.size(0), n, weight.size(0),
                                                  hidden.size(1), hidden.element_size());
    if (options.pass == LossPass::kOnePass || c >= std::min(n, detail::kOnePassMinRows)) return ahead;
  }
  return std::nullopt;
}

}  // namespace

void check_device_supported(c10::Device device) {
  if (device.is_cpu()) return;
  SFTGO_CHECK_HINT(device.is_cuda(), ErrorKind::kConfig, "use model.device cpu, cuda or auto", "loss: device ",
                   device.str(), " is not supported by the fused loss (CPU and CUDA only)");
#ifndef SFTGO_LOSS_CUDA
  SFTGO_FAIL_HINT(ErrorKind::kConfig,
                  "rebuild with the CUDA kernels (scripts/setup.sh with nvcc on the PATH, or -DSFTGO_CUDA=ON), or set "
                  "model.device: cpu",
                  "loss: the model is on ", device.str(),
                  " but this build has no CUDA loss kernels "
                  "(sftgo-train --version: CUDA kernels: off)");
#endif
}

bool cuda_kernels_built() {
#ifdef SFTGO_LOSS_CUDA
  return true;
#else
  return false;
#endif
}

at::Tensor fused_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                            const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  validate_inputs(hidden, weight, labels, groups, options);
#ifdef SFTGO_LOSS_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (hidden.is_cuda()) guard.emplace(hidden.device());
#endif
  Call call{labels, groups, &options, info};
  // Backward-in-forward pays only when a backward follows: under no_grad the forward alone runs.
  const bool grad_mode = at::GradMode::is_enabled();
  call.need_h = grad_mode && hidden.requires_grad();
  call.need_w = grad_mode && weight.requires_grad();
  std::optional<LossWeights> ahead;
  {
    // Without grad, as inside an autograd Function's forward: nothing here is differentiated.
    const at::NoGradGuard no_grad;
    call.trained = select_trained(hidden, labels, groups, options, weight.size(0));
    ahead = one_pass_weights(hidden, weight, call);
  }
  if (ahead) return detail::one_pass_loss(hidden, weight, call, *ahead);
  return detail::two_pass_loss(hidden, weight, call);
}

}  // namespace sftgo::loss
