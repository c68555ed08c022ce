// Fused LM head + SFT-GO loss (CPU and CUDA) and the materialised reference used as test oracle.
//
// Algorithm choice: two-pass with recomputation.
//   forward : for each chunk of C trained tokens, logits = h_c @ W^T into one reusable [C, V] buffer,
//             row kernel -> lse and CE per token (fp32). Only lse/CE ([N] floats) survive the chunk.
//             Then group stats -> weights (own stats or the trainer's hook, e.g. after an all-reduce).
//   backward: recompute each chunk's logits, the row kernel turns them in place into
//             w_i * g * (softmax - onehot), then grad_h[chunk] = G @ W and grad_W += G^T @ h_c.
// Why not backward-in-forward (Liger style, gradients computed during forward): the SFT-GO gradient
// of a token depends on which group is worst and on N_worst, which are known only after *all*
// tokens of the forward - and with step scope only after the trainer's hook has seen the stats of
// every micro-batch and rank. Computing gradients in forward would therefore need one unscaled
// weight-gradient accumulator per group (an extra fp32 [V, H], 25-100% of the fp32 [T, V] logits at
// T = 4k-16k, H = 4096), breaking the <= 10% memory goal. Recomputation costs one extra
// [C, H] x [H, V] matmul per chunk (4 instead of 3 LM-head matmuls), which is partly repaid by never
// writing/reading the [T, V] logits, their log_softmax and its gradient (memory-bound passes), and
// by skipping ignored (prompt) tokens entirely. The forward alone (eval, no_grad) does 1 matmul.
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "sftgo/core/error.h"
#include "sftgo/kernels/row_softmax.h"
#include "sftgo/loss/group_loss.h"

#ifdef SFTGO_LOSS_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sftgo/kernels/fused_ce_cuda.h"
#endif

namespace sftgo::loss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::string sizes_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void validate_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                     const at::Tensor& groups, const FusedLossOptions& options) {
  SFTGO_CHECK(hidden.defined() && hidden.dim() == 2, ErrorKind::kModel,
              "loss: hidden must be [T, H], got ", hidden.defined() ? sizes_str(hidden) : "undefined");
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
  if (options.objective != Objective::kCe || groups.defined()) {
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

// Trained tokens, compacted so that ignored (prompt) tokens cost no matmul work.
struct Trained {
  at::Tensor rows;    // [N] int64 positions in [0, T); undefined when every token is trained
  at::Tensor hidden;  // [N, H] contiguous
  at::Tensor labels;  // [N] int64 in [0, V)
  at::Tensor groups;  // [N] bool; undefined for objective ce
  int64_t n = 0;
};

Trained select_trained(const at::Tensor& hidden, const at::Tensor& labels, const at::Tensor& groups,
                       const FusedLossOptions& options, int64_t vocab) {
  Trained tr;
  const at::Tensor mask = labels != options.ignore_index;  // [T]
  const int64_t t = labels.size(0);
  tr.n = mask.sum().item<int64_t>();
  const bool need_groups = options.objective != Objective::kCe;
  if (tr.n == t) {
    tr.hidden = hidden.contiguous();
    tr.labels = labels.contiguous();
    if (need_groups) tr.groups = groups.to(at::kBool).contiguous();
  } else {
    tr.rows = mask.nonzero().squeeze(1);
    tr.hidden = hidden.index_select(0, tr.rows);
    tr.labels = labels.index_select(0, tr.rows);
    if (need_groups) tr.groups = groups.index_select(0, tr.rows).to(at::kBool);
  }
  if (tr.n > 0) {
    const auto minmax = at::aminmax(tr.labels);
    const int64_t lo = std::get<0>(minmax).item<int64_t>();
    const int64_t hi = std::get<1>(minmax).item<int64_t>();
    SFTGO_CHECK(lo >= 0 && hi < vocab, ErrorKind::kData, "loss: labels [T] must be in [0, V = ", vocab, ") or ",
                options.ignore_index, ", found values in [", lo, ", ", hi, "]");
  }
  return tr;
}

int64_t choose_chunk_tokens(int64_t requested, int64_t t, int64_t n, int64_t vocab, int64_t h, int64_t elt) {
  if (n == 0) return 0;
  if (requested > 0) return std::min(requested, n);
  // Budget: 8% of the fp32 [T, V] logits for the chunk buffer, minus the compacted copies of
  // hidden and of its gradient, so the total extra stays under the 10% goal.
  double budget = 0.08 * static_cast<double>(t) * static_cast<double>(vocab) * 4.0;
  if (n < t) budget -= 2.0 * static_cast<double>(n) * static_cast<double>(h) * static_cast<double>(elt);
  const int64_t c = static_cast<int64_t>(budget / (static_cast<double>(vocab) * static_cast<double>(elt)));
  return std::clamp<int64_t>(c, 1, n);
}

// ---- row kernels over one chunk of logits [C, V] (contiguous) ----

template <typename Scalar>
void cpu_lse_loss(const at::Tensor& logits, const int64_t* labels, float* lse, float* loss) {
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const Scalar* base = logits.const_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Scalar* row = base + r * vocab;
      const float l = kernels::softmax_state_lse(kernels::row_softmax_state(row, 0, vocab));
      lse[r] = l;
      loss[r] = kernels::cross_entropy_from_lse(l, static_cast<float>(row[labels[r]]));
    }
  });
}

template <typename Scalar>
void cpu_ce_grad(at::Tensor& logits, const int64_t* labels, const float* lse, const float* scale) {
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  Scalar* base = logits.mutable_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      kernels::row_cross_entropy_grad(base + r * vocab, 0, vocab, labels[r], lse[r], scale[r]);
    }
  });
}

// logits [C, V], labels [C] int64, lse/loss [C] fp32 (all contiguous, same device).
void row_lse_loss(const at::Tensor& logits, const at::Tensor& labels, at::Tensor& lse, at::Tensor& loss) {
  if (logits.is_cuda()) {
#ifdef SFTGO_LOSS_CUDA
    const auto type = logits.scalar_type() == at::kFloat ? kernels::LogitType::kFloat32 : kernels::LogitType::kBFloat16;
    const char* err = kernels::row_lse_loss_cuda(logits.const_data_ptr(), type, logits.size(0), logits.size(1), logits.stride(0),
        labels.const_data_ptr<int64_t>(), lse.mutable_data_ptr<float>(), loss.mutable_data_ptr<float>(),
        c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA lse kernel failed: ", err);
    return;
#else
    SFTGO_FAIL_HINT(ErrorKind::kUsage, "reconfigure with -DSFTGO_CUDA=ON (needs nvcc)",
                    "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_lse_loss<float>(logits, labels.const_data_ptr<int64_t>(), lse.mutable_data_ptr<float>(),
                        loss.mutable_data_ptr<float>());
  } else {
    cpu_lse_loss<c10::BFloat16>(logits, labels.const_data_ptr<int64_t>(), lse.mutable_data_ptr<float>(),
                                loss.mutable_data_ptr<float>());
  }
}

// In place: logits [C, V] <- scale[r] * (softmax - onehot(label)).
void row_ce_grad(at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse, const at::Tensor& scale) {
  if (logits.is_cuda()) {
#ifdef SFTGO_LOSS_CUDA
    const auto type = logits.scalar_type() == at::kFloat ? kernels::LogitType::kFloat32 : kernels::LogitType::kBFloat16;
    const char* err = kernels::row_cross_entropy_grad_cuda(logits.mutable_data_ptr(), type, logits.size(0), logits.size(1),
                                         logits.stride(0), labels.const_data_ptr<int64_t>(),
                                         lse.const_data_ptr<float>(), scale.const_data_ptr<float>(),
                                         c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA gradient kernel failed: ", err);
    return;
#else
    SFTGO_FAIL(ErrorKind::kUsage, "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_ce_grad<float>(logits, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                       scale.const_data_ptr<float>());
  } else {
    cpu_ce_grad<c10::BFloat16>(logits, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                               scale.const_data_ptr<float>());
  }
}

// Local stats from per-token CE [N] fp32 (and groups [N] bool): one small device->host copy.
GroupStats local_stats(const at::Tensor& loss, const at::Tensor& groups, int64_t n) {
  GroupStats s;
  if (n == 0) return s;
  const at::Tensor loss64 = loss.to(at::kDouble);
  if (!groups.defined()) {  // objective ce: no group bookkeeping, everything counts as group 0
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

LossWeights resolve_weights(const GroupStats& stats, const FusedLossOptions& options) {
  LossWeights w = options.weights_hook ? options.weights_hook(stats)
                                       : compute_loss_weights(stats, options.lambda, options.objective);
  SFTGO_CHECK(std::isfinite(w.coef_all) && std::isfinite(w.coef_group[0]) && std::isfinite(w.coef_group[1]),
              ErrorKind::kNumeric, "loss: weights hook returned non-finite coefficients (", w.coef_all, ", ",
              w.coef_group[0], ", ", w.coef_group[1], ")");
  return w;
}

// w_i = coef_all + coef_group[g_i] per trained token: [N] fp32.
at::Tensor row_weights(const LossWeights& w, const at::Tensor& groups, int64_t n, const at::TensorOptions& opts) {
  if (!groups.defined()) return at::full({n}, w.coef_all + w.coef_group[0], opts);
  return at::where(groups, w.coef_all + w.coef_group[1], w.coef_all + w.coef_group[0]).to(opts);
}

struct Call {
  at::Tensor labels;  // [T] int64
  at::Tensor groups;  // [T] or undefined
  const FusedLossOptions* options;
  LossInfo* info;
};

class FusedGroupLossFn : public torch::autograd::Function<FusedGroupLossFn> {
 public:
  // hidden [T, H], weight [V, H], labels [T] int64, groups [T] (or undefined for ce).
  // labels/groups travel inside `call` rather than as tensor arguments: they are not differentiable
  // and groups may be undefined (objective ce), which autograd's input bookkeeping rejects.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const Call* call) {
    const at::Tensor& labels = call->labels;
    const at::Tensor& groups = call->groups;
    const FusedLossOptions* options = call->options;
    LossInfo* info = call->info;
    const int64_t t = hidden.size(0);
    const int64_t h = hidden.size(1);
    const int64_t vocab = weight.size(0);
    const auto f32 = hidden.options().dtype(at::kFloat);
    Trained tr = select_trained(hidden, labels, groups, *options, vocab);
    const int64_t chunk = choose_chunk_tokens(options->chunk_tokens, t, tr.n, vocab, h, hidden.element_size());

    at::Tensor lse = at::empty({tr.n}, f32);   // [N]
    at::Tensor loss = at::empty({tr.n}, f32);  // [N]
    if (tr.n > 0) {
      const at::Tensor w_t = weight.t();  // [H, V] view, no copy: the GEMM reads W transposed
      at::Tensor buffer = at::empty({chunk, vocab}, hidden.options());  // [C, V], reused by every chunk
      for (int64_t c0 = 0; c0 < tr.n; c0 += chunk) {
        const int64_t c = std::min(chunk, tr.n - c0);
        at::Tensor logits = buffer.narrow(0, 0, c);
        at::mm_out(logits, tr.hidden.narrow(0, c0, c), w_t);
        at::Tensor lse_c = lse.narrow(0, c0, c);
        at::Tensor loss_c = loss.narrow(0, c0, c);
        row_lse_loss(logits, tr.labels.narrow(0, c0, c), lse_c, loss_c);
      }
    }
    const GroupStats stats = local_stats(loss, tr.groups, tr.n);
    if (options->check_numerics && !std::isfinite(stats.total_loss())) {
      fail_numeric("fused_group_loss", stats.total_loss(), hidden, weight);
    }
    const LossWeights w = resolve_weights(stats, *options);
    const LossMetrics metrics = compute_loss_metrics(stats, w, options->lambda);
    if (info != nullptr) {
      info->local_stats = stats;
      info->weights = w;
      info->metrics = metrics;
      info->chunk_tokens = chunk;
    }

    const bool all_zero = w.coef_all == 0.0 && w.coef_group[0] == 0.0 && w.coef_group[1] == 0.0;
    ctx->saved_data["n"] = tr.n;
    ctx->saved_data["t"] = t;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["zero"] = all_zero || tr.n == 0;
    if (tr.n > 0 && !all_zero) {
      const at::Tensor scale = row_weights(w, tr.groups, tr.n, f32);  // [N]
      ctx->save_for_backward({tr.hidden, weight, tr.labels, lse, scale, tr.rows});
    } else {
      ctx->save_for_backward({hidden, weight});  // shapes for the zero gradients
    }
    return at::scalar_tensor(metrics.loss, f32);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool need_h = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    const auto saved = ctx->get_saved_variables();
    const int64_t t = ctx->saved_data["t"].toInt();
    variable_list grads(3);  // hidden, weight, call
    if (ctx->saved_data["zero"].toBool()) {
      const at::Tensor& weight = saved[1];
      if (need_h) grads[0] = at::zeros({t, weight.size(1)}, weight.options());
      if (need_w) grads[1] = at::zeros_like(weight);
      return grads;
    }
    const at::Tensor& hidden_c = saved[0];  // [N, H]
    const at::Tensor& weight = saved[1];    // [V, H]
    const at::Tensor& labels_c = saved[2];  // [N]
    const at::Tensor& lse = saved[3];       // [N]
    const at::Tensor& rows = saved[5];      // [N] or undefined
    const int64_t n = ctx->saved_data["n"].toInt();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const int64_t vocab = weight.size(0);
    // Upstream gradient folded into the per-row scale on device: no host sync.
    const at::Tensor scale = saved[4] * grad_outputs[0].to(at::kFloat);  // [N]

    at::Tensor grad_hc = need_h ? at::empty_like(hidden_c) : at::Tensor();  // [N, H]
    // bf16 weights: the gradient accumulates across chunks in bf16 through addmm (fp32 inside each
    // GEMM); an fp32 accumulator would cost an extra [V, H] fp32. Error analysis in docs/loss.md.
    at::Tensor grad_w = need_w ? at::zeros_like(weight) : at::Tensor();  // [V, H]
    if (need_h || need_w) {
      const at::Tensor w_t = weight.t();
      at::Tensor buffer = at::empty({chunk, vocab}, hidden_c.options());  // [C, V]
      for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t c = std::min(chunk, n - c0);
        const at::Tensor h = hidden_c.narrow(0, c0, c);
        at::Tensor logits = buffer.narrow(0, 0, c);
        at::mm_out(logits, h, w_t);
        row_ce_grad(logits, labels_c.narrow(0, c0, c), lse.narrow(0, c0, c), scale.narrow(0, c0, c));
        if (need_h) {
          at::Tensor out = grad_hc.narrow(0, c0, c);
          at::mm_out(out, logits, weight);  // [C, V] @ [V, H]
        }
        if (need_w) grad_w.addmm_(logits.t(), h);  // [V, C] @ [C, H]
      }
    }
    if (need_h) {
      grads[0] = rows.defined() ? at::zeros({t, hidden_c.size(1)}, hidden_c.options()).index_copy_(0, rows, grad_hc)
                                : grad_hc;
    }
    if (need_w) grads[1] = grad_w;
    return grads;
  }
};

}  // namespace

at::Tensor fused_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                            const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  validate_inputs(hidden, weight, labels, groups, options);
#ifdef SFTGO_LOSS_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (hidden.is_cuda()) guard.emplace(hidden.device());
#endif
  const Call call{labels, groups, &options, info};
  return FusedGroupLossFn::apply(hidden, weight, &call);
}

at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info,
                                at::ScalarType compute_dtype) {
  validate_inputs(hidden, weight, labels, groups, options);
  SFTGO_CHECK(compute_dtype == at::kFloat || compute_dtype == at::kDouble, ErrorKind::kInternal,
              "reference_group_loss: compute dtype must be float32 or float64");
  const int64_t vocab = weight.size(0);
  const at::Tensor logits = at::matmul(hidden.to(compute_dtype), weight.to(compute_dtype).t());  // [T, V]
  const at::Tensor logp = at::log_softmax(logits, 1);                                     // [T, V]
  const at::Tensor trained = labels != options.ignore_index;                              // [T]
  const at::Tensor safe_labels = at::where(trained, labels, at::zeros_like(labels));
  if (trained.any().item<bool>()) {
    const at::Tensor picked = labels.masked_select(trained);
    SFTGO_CHECK(picked.min().item<int64_t>() >= 0 && picked.max().item<int64_t>() < vocab, ErrorKind::kData,
                "loss: labels [T] must be in [0, V = ", vocab, ") or ", options.ignore_index);
  }
  // Per-token CE in double so that the oracle's own rounding stays far below the tolerances.
  const at::Tensor ce = -logp.gather(1, safe_labels.unsqueeze(1)).squeeze(1).to(at::kDouble);  // [T]
  const at::Tensor m_all = trained.to(at::kDouble);
  at::Tensor m1 = at::zeros_like(m_all);
  if (options.objective != Objective::kCe) m1 = (groups.to(at::kBool) & trained).to(at::kDouble);
  const at::Tensor m0 = m_all - m1;

  GroupStats stats;
  {
    const at::Tensor ced = ce.detach();
    stats.loss_sum[0] = (ced * m0).sum().item<double>();
    stats.loss_sum[1] = (ced * m1).sum().item<double>();
    stats.count[0] = static_cast<int64_t>(m0.sum().item<double>());
    stats.count[1] = static_cast<int64_t>(m1.sum().item<double>());
  }
  if (options.check_numerics && !std::isfinite(stats.total_loss())) {
    fail_numeric("reference_group_loss", stats.total_loss(), hidden, weight);
  }
  const int64_t n = stats.total_count();
  const at::Tensor zero = (ce * 0.0).sum();  // keeps the graph so backward gives zero gradients
  at::Tensor result;
  LossWeights w;
  if (options.weights_hook) {
    w = resolve_weights(stats, options);
    result = (ce * (w.coef_all * m_all + w.coef_group[0] * m0 + w.coef_group[1] * m1)).sum();
  } else {
    w = compute_loss_weights(stats, options.lambda, options.objective);
    const auto masked_mean = [&](const at::Tensor& m, int64_t count) { return (ce * m).sum() / double(count); };
    switch (options.objective) {
      case Objective::kCe:
        result = n > 0 ? masked_mean(m_all, n) : zero;
        break;
      case Objective::kRho1:
        result = stats.count[1] > 0 ? masked_mean(m1, stats.count[1]) : zero;
        break;
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
    info->chunk_tokens = hidden.size(0);
  }
  return result.to(at::kFloat);
}

at::Tensor reference_group_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  return reference_group_loss(hidden, weight, labels, groups, options, info, at::kFloat);
}

}  // namespace sftgo::loss
