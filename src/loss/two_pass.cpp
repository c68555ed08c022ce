// The fused loss's two-pass algorithm with recomputation, blocked over the vocabulary (the general case;
// fused_loss.cpp decides when the one-pass algorithm runs instead).
//   forward : the N trained tokens are compacted; for each block of Vb vocabulary rows of W,
//             logits = h_c @ W_blk^T into one reusable [N, Vb] buffer and the row kernel merges the
//             block into each token's online-softmax state (fp32); the last block yields lse and CE.
//             Only [N] floats survive. Then group stats -> weights (own stats or the trainer's hook).
//   backward: recompute each block's logits, the row kernel turns them in place into
//             w_i * g * (softmax - onehot), then grad_h += G @ W_blk and grad_W[blk] = G^T @ h_c.
// Blocking over the vocabulary rather than over tokens keeps every GEMM as wide as the batch (M = N)
// whatever the memory budget, reads W once per pass, and writes each row of grad_W exactly once (no
// read-modify-write of a [V, H] accumulator per chunk, one rounding for bf16). A token-chunked
// variant measured 3-5x slower than unfused CE on CPU: its thin [C, H] x [H, V] GEMMs re-stream all
// of W per chunk and are memory-bound.
// Why not backward-in-forward here: the SFT-GO gradient of a token depends on which group is worst and
// on N_worst, known only after *all* tokens of the forward - and with step scope only after the
// trainer's hook has seen the stats of every micro-batch and rank. Computing gradients in forward
// would then need one unscaled weight-gradient accumulator per group (an extra fp32 [V, H], 25-100%
// of the fp32 [T, V] logits at T = 4k-16k, H = 4096), breaking the <= 10% memory goal. Recomputation
// costs one extra [N, H] x [H, Vb] GEMM per block (4 instead of 3 LM-head GEMMs in total), which is
// partly repaid by never writing/reading the [T, V] logits, their log_softmax and its gradient
// (memory-bound passes), and by skipping ignored (prompt) tokens entirely. The forward alone (eval,
// no_grad) does 1 matmul.
#include <algorithm>
#include <cmath>
#include <utility>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fused_loss_impl.h"
#include "sftgo/core/error.h"
#include "sftgo/core/torch_grad.h"  // take_grad_for_accumulation (accumulate_into_grad), shared with the model
#include "sftgo/kernels/row_softmax_dispatch.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::loss::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Columns per vocabulary block. The [N, Vb] block buffer plus the other temporaries (compacted hidden
// and its gradient, the fp32 accumulator of the hidden gradient for bf16) get kBudgetShare (9%) of the fp32 [T, V]
// logits. Floor: 256 columns (a GEMM narrower than that wastes the device); multiple of 64 for alignment.
// `rows` = trained tokens per pass (the buffer's height), n = all trained tokens.
int64_t choose_block_cols(int64_t requested, int64_t t, int64_t n, int64_t rows, int64_t vocab, int64_t h,
                          int64_t elt) {
  if (n == 0) return 0;
  if (requested > 0) return std::min(requested, vocab);
  double budget = kBudgetShare * static_cast<double>(t) * static_cast<double>(vocab) * 4.0;
  const double nh = static_cast<double>(n) * static_cast<double>(h);
  if (n < t) budget -= 2.0 * nh * static_cast<double>(elt);       // compacted hidden and its gradient
  if (elt != 4) budget -= nh * (4.0 + static_cast<double>(elt));  // fp32 accumulator + one GEMM result
  int64_t cols = static_cast<int64_t>(budget / (static_cast<double>(rows) * static_cast<double>(elt)));
  cols = cols / 64 * 64;
  return std::clamp<int64_t>(cols, std::min<int64_t>(vocab, 256), vocab);
}

// The two-pass path keeps all N trained rows of hidden compacted ([N, H], saved for the backward).
void compact_hidden(Trained& tr, const at::Tensor& hidden) {
  if (!tr.hidden.defined()) tr.hidden = hidden.index_select(0, tr.rows);
}

LossWeights resolve_weights(const GroupStats& stats, const FusedLossOptions& options) {
  LossWeights w = options.weights_hook ? options.weights_hook(stats)
                                       : compute_loss_weights(stats, options.lambda, options.objective);
  SFTGO_CHECK(std::isfinite(w.coef_all) && std::isfinite(w.coef_group[0]) && std::isfinite(w.coef_group[1]),
              ErrorKind::kNumeric, "loss: weights hook returned non-finite coefficients (", w.coef_all, ", ",
              w.coef_group[0], ", ", w.coef_group[1], ")");
  return w;
}

// Applies the groups hook: per-token CE [N] of the trained tokens -> the hook's [T] groups, validated
// and compacted into tr.groups [N] bool.
void apply_groups_hook(const FusedLossOptions& options, const at::Tensor& loss, Trained& tr, int64_t t,
                       const at::Device& device) {
  at::Tensor full = at::zeros({t}, loss.options());  // [T] fp32, 0 at ignored positions
  if (tr.n > 0) {
    if (tr.rows.defined()) {
      full.index_copy_(0, tr.rows, loss);
    } else {
      full.copy_(loss);
    }
  }
  const at::Tensor g = options.groups_hook(full);
  SFTGO_CHECK(g.defined() && g.dim() == 1 && g.size(0) == t, ErrorKind::kUsage,
              "loss: groups_hook must return groups [T] with T = ", t, ", got ",
              g.defined() ? sizes_str(g) : "undefined");
  const auto gt = g.scalar_type();
  SFTGO_CHECK(gt == at::kBool || gt == at::kChar || gt == at::kByte, ErrorKind::kUsage,
              "loss: groups_hook must return bool, int8 or uint8 groups [T], got ", gt);
  SFTGO_CHECK(g.device() == device, ErrorKind::kUsage, "loss: groups_hook returned groups [T] on ", g.device(),
              " but hidden is on ", device);
  tr.groups = (tr.rows.defined() ? g.index_select(0, tr.rows) : g).to(at::kBool).contiguous();  // [N]
}

// Forward over all blocks: the [N] fp32 lse and per-token CE of the trained tokens tr (hidden compacted),
// weight [V, H]. `rows` trained tokens per pass (all N unless chunk_tokens), `block` columns per block.
void two_pass_forward_blocks(const Trained& tr, const at::Tensor& weight, int64_t rows, int64_t block, at::Tensor& lse,
                             at::Tensor& loss) {
  const int64_t n = tr.n;
  const int64_t vocab = weight.size(0);
  const auto f32 = lse.options();
  const kernels::RowState all{at::full({n}, -INFINITY, f32), at::zeros({n}, f32), at::zeros({n}, f32)};
  const at::Tensor flat = at::empty({rows * block}, tr.hidden.options());  // the [rows, Vb] block buffer
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int64_t nr = std::min(rows, n - r0);
    const at::Tensor h_rows = tr.hidden.narrow(0, r0, nr);  // [nr, H]
    const at::Tensor labels_rows = tr.labels.narrow(0, r0, nr);
    kernels::RowState st{all.max.narrow(0, r0, nr), all.sum.narrow(0, r0, nr), all.label_logit.narrow(0, r0, nr)};
    at::Tensor lse_rows = lse.narrow(0, r0, nr);
    at::Tensor loss_rows = loss.narrow(0, r0, nr);
    for (int64_t v0 = 0; v0 < vocab; v0 += block) {
      const int64_t cols = std::min(block, vocab - v0);
      at::Tensor logits = block_view(flat, nr, cols);
      at::mm_out(logits, h_rows, weight.narrow(0, v0, cols).t());  // [nr, H] @ [H, Vb]
      const bool last = v0 + cols >= vocab;
      kernels::row_softmax_block(logits, v0, labels_rows, st, last ? &lse_rows : nullptr,
                                 last ? &loss_rows : nullptr);
    }
  }
}

// After the forward's blocks: groups hook (Rho-1), stats, numeric check, weights (own stats, the
// trainer's weights_hook or known_weights) and metrics. loss: per-token CE [N] fp32.
LossWeights two_pass_weights(const at::Tensor& hidden, const at::Tensor& weight, Call& call, const at::Tensor& loss,
                             int64_t block, LossMetrics& metrics) {
  const FusedLossOptions& options = *call.options;
  Trained& tr = call.trained;
  const int64_t n = tr.n;
  if (options.groups_hook) {
    // The hook must not rank NaNs: check the losses before it sees them.
    if (options.check_numerics && n > 0) {
      const double sum = loss.sum(at::kDouble).item<double>();
      if (!std::isfinite(sum)) fail_numeric("fused_group_loss", sum, hidden, weight);
    }
    apply_groups_hook(options, loss, tr, hidden.size(0), hidden.device());
  }
  const GroupStats stats = local_stats(loss, tr.groups, n);
  if (options.check_numerics && !std::isfinite(stats.total_loss())) {
    fail_numeric("fused_group_loss", stats.total_loss(), hidden, weight);
  }
  const LossWeights w = options.known_weights ? *options.known_weights : resolve_weights(stats, options);
  metrics = compute_loss_metrics(stats, w, options.lambda);
  if (call.info != nullptr) {
    call.info->local_stats = stats;
    call.info->weights = w;
    call.info->metrics = metrics;
    call.info->chunk_vocab = block;
    call.info->onepass_tokens = 0;
  }
  return w;
}

// What backward needs besides the saved tensors.
struct TwoPassState {
  int64_t n = 0;            // trained tokens
  int64_t t = 0;            // all tokens
  int64_t block = 0;        // vocabulary columns per block
  int64_t rows = 0;         // trained tokens per pass
  bool zero = false;        // no trained token or every coefficient 0: zero gradients, only {hidden, weight} saved
  bool accumulate = false;  // options.accumulate_into_grad
};

// Saved tensors (when not `zero`) in save_for_backward order.
enum TwoPassSaved : size_t {
  kHiddenC = 0,  // [N, H] compacted hidden (all of hidden [T, H] when `zero`)
  kWeight = 1,   // [V, H]
  kLabelsC = 2,  // [N] int64
  kLse = 3,      // [N] fp32
  kScale = 4,    // [N] fp32 w_i
  kRows = 5,     // [N] int64 positions of the trained tokens, or undefined (all trained)
};

// Where the backward writes. d hidden sums over vocabulary blocks: accumulated in fp32 (directly in the
// result for fp32 inputs; a separate fp32 [N, H] for bf16). d W rows of a block are written once, by one GEMM.
struct TwoPassGrads {
  at::Tensor grad_hc;  // [N, H] fp32, or undefined (not wanted)
  at::Tensor taken;    // [V, H] the accumulated weight.grad taken over, or undefined
  at::Tensor grad_w;   // [V, H]; a [Vb, H] buffer when `taken` is defined; undefined when not wanted
};

TwoPassGrads two_pass_grad_targets(const variable_list& saved, const TwoPassState& state, bool need_h, bool need_w) {
  const at::Tensor& hidden_c = saved[kHiddenC];
  const at::Tensor& weight = saved[kWeight];
  TwoPassGrads g;
  if (need_h) g.grad_hc = at::zeros({state.n, hidden_c.size(1)}, hidden_c.options().dtype(at::kFloat));
  // One pass over the tokens: each block's d W rows are final after one GEMM, so they can go into
  // an accumulated weight.grad (taken) through a [Vb, H] buffer instead of a whole new [V, H].
  if (need_w && state.rows >= state.n && state.accumulate) g.taken = take_grad_for_accumulation(weight);
  if (need_w) {
    g.grad_w = g.taken.defined() ? at::empty({std::min(state.block, weight.size(0)), weight.size(1)}, weight.options())
                                 : at::empty_like(weight);
  }
  return g;
}

// The saved [N] tensors narrowed to the trained tokens [r0, r0 + nr) of one pass.
struct PassRows {
  int64_t r0 = 0;
  at::Tensor h_rows;  // [nr, H]
  at::Tensor labels;  // [nr] int64
  at::Tensor lse;     // [nr] fp32
  at::Tensor scale;   // [nr] fp32, upstream gradient folded in
};

// One block: recompute logits [nr, Vb] for columns [v0, v0 + cols), turn them into d loss / d logits,
// then add their share of both gradients.
void two_pass_backward_block(const at::Tensor& weight, const PassRows& p, const at::Tensor& flat, int64_t v0,
                             int64_t cols, TwoPassGrads& g) {
  const int64_t nr = p.h_rows.size(0);
  const at::Tensor w_blk = weight.narrow(0, v0, cols);  // [Vb, H]
  at::Tensor logits = block_view(flat, nr, cols);       // [nr, Vb]
  at::mm_out(logits, p.h_rows, w_blk.t());
  kernels::row_ce_grad(logits, v0, p.labels, p.lse, p.scale);  // now d loss / d logits
  if (g.grad_hc.defined()) {
    at::Tensor gh = g.grad_hc.narrow(0, p.r0, nr);
    if (p.h_rows.scalar_type() == at::kFloat) {
      grad_hidden_mm(gh, logits, w_blk, true);  // += [nr, Vb] @ [Vb, H]
    } else {
      gh.add_(at::mm(logits, w_blk));
    }
  }
  if (g.grad_w.defined() && g.taken.defined()) {
    // The same GEMM as below into a buffer of the same [cols, H] layout, then AccumulateGrad's
    // elementwise old + new.
    at::Tensor out = g.grad_w.narrow(0, 0, cols);
    at::mm_out(out, logits.t(), p.h_rows);  // [Vb, nr] @ [nr, H]
    g.taken.narrow(0, v0, cols).add_(out);
  } else if (g.grad_w.defined()) {
    at::Tensor out = g.grad_w.narrow(0, v0, cols);
    if (p.r0 == 0) {
      at::mm_out(out, logits.t(), p.h_rows);  // [Vb, nr] @ [nr, H]
    } else {
      out.addmm_(logits.t(), p.h_rows);  // only with chunk_tokens: later token chunks accumulate
    }
  }
}

// The gradients of hidden [T, H] and weight [V, H] (either may be unwanted) from the saved tensors.
variable_list two_pass_backward(const variable_list& saved, const TwoPassState& state, const at::Tensor& grad_out,
                                bool need_h, bool need_w) {
  const at::Tensor& hidden_c = saved[kHiddenC];
  const at::Tensor& weight = saved[kWeight];
  const at::Tensor& rows = saved[kRows];
  const int64_t vocab = weight.size(0);
  // Upstream gradient folded into the per-row scale on the device: no host sync.
  const at::Tensor scale = saved[kScale] * grad_out.to(at::kFloat);  // [N]
  TwoPassGrads g = two_pass_grad_targets(saved, state, need_h, need_w);
  if (need_h || need_w) {
    const at::Tensor flat = at::empty({state.rows * state.block}, hidden_c.options());
    for (int64_t r0 = 0; r0 < state.n; r0 += state.rows) {
      const int64_t nr = std::min(state.rows, state.n - r0);
      const PassRows p{r0, hidden_c.narrow(0, r0, nr), saved[kLabelsC].narrow(0, r0, nr), saved[kLse].narrow(0, r0, nr),
                       scale.narrow(0, r0, nr)};
      for (int64_t v0 = 0; v0 < vocab; v0 += state.block) {
        two_pass_backward_block(weight, p, flat, v0, std::min(state.block, vocab - v0), g);
      }
    }
  }
  variable_list grads(3);  // hidden, weight, call
  if (need_h) {
    if (hidden_c.scalar_type() != at::kFloat) g.grad_hc = g.grad_hc.to(hidden_c.scalar_type());
    grads[0] = rows.defined()
                   ? at::zeros({state.t, hidden_c.size(1)}, hidden_c.options()).index_copy_(0, rows, g.grad_hc)
                   : g.grad_hc;
  }
  if (need_w) grads[1] = g.taken.defined() ? std::move(g.taken) : g.grad_w;
  return grads;
}

class TwoPassLossFn : public torch::autograd::Function<TwoPassLossFn> {
 public:
  // hidden [T, H], weight [V, H]; call->trained: the trained tokens (compacted here).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight, Call* call) {
    const FusedLossOptions& options = *call->options;
    Trained& tr = call->trained;
    const int64_t t = hidden.size(0);
    const int64_t vocab = weight.size(0);
    const auto f32 = hidden.options().dtype(at::kFloat);
    const int64_t n = tr.n;
    if (n > 0 && tr.rows.defined()) compact_hidden(tr, hidden);
    const int64_t rows = options.chunk_tokens > 0 ? std::min(options.chunk_tokens, n) : n;
    const int64_t block =
        choose_block_cols(options.chunk_vocab, t, n, rows, vocab, hidden.size(1), hidden.element_size());
    at::Tensor lse = at::empty({n}, f32);   // [N]
    at::Tensor loss = at::empty({n}, f32);  // [N]
    if (n > 0) two_pass_forward_blocks(tr, weight, rows, block, lse, loss);
    LossMetrics metrics;
    const LossWeights w = two_pass_weights(hidden, weight, *call, loss, block, metrics);
    const bool zero_weights = all_zero(w);
    save_state(ctx, TwoPassState{n, t, block, rows, zero_weights || n == 0, options.accumulate_into_grad});
    if (n > 0 && !zero_weights) {
      const at::Tensor scale = row_weights(w, tr.groups, n, f32);  // [N] w_i
      ctx->save_for_backward({tr.hidden, weight, tr.labels, lse, scale, tr.rows});
    } else {
      ctx->save_for_backward({hidden, weight});  // shapes for the zero gradients
    }
    return at::scalar_tensor(metrics.loss, f32);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool need_h = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    const variable_list saved = ctx->get_saved_variables();
    const TwoPassState& state = saved_state<TwoPassState>(ctx);
    if (state.zero) {
      const at::Tensor& weight = saved[kWeight];
      variable_list grads(3);  // hidden, weight, call
      if (need_h) grads[0] = at::zeros({state.t, weight.size(1)}, weight.options());
      if (need_w) grads[1] = at::zeros_like(weight);
      return grads;
    }
    return two_pass_backward(saved, state, grad_outputs[0], need_h, need_w);
  }
};

}  // namespace

at::Tensor two_pass_loss(const at::Tensor& hidden, const at::Tensor& weight, Call& call) {
  return TwoPassLossFn::apply(hidden, weight, &call);
}

}  // namespace sftgo::loss::detail
