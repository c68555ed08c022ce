// The fused loss's one-pass algorithm (backward-in-forward, Liger style), for coefficients known before
// the forward (fused_loss.cpp decides when). Each block of C trained tokens gets its full [C, V] logits,
// the row kernel turns them into w_i * (softmax - onehot) right after their lse, and grad_h[blk] = G @ W,
// grad_W += G^T @ h_blk follow at once: 3 LM-head GEMMs, nothing recomputed, the gradients travel to
// backward() as saved tensors. It blocks over tokens (not the vocabulary) because the softmax of a
// row needs the row's lse before any of its entries can enter grad_W = sum_r G[r,:]^T h_r; the price
// is thinner GEMMs (M = C ~ 10% of T) and a read-modify-write of grad_W per token block.
#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fused_loss_impl.h"
#include "sftgo/core/error.h"
#include "sftgo/kernels/row_softmax_dispatch.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::loss::detail {

// Trained tokens per block, whose [rows, V] logits live in one buffer of the input dtype. Same budget
// as the two-pass blocks (kBudgetShare of the fp32 [T, V] logits); when tokens are ignored each block
// also gathers its [rows, H] hidden rows and its [rows, H] d hidden before scattering it, so a row
// costs V + 2H elements (nothing [N, H]-sized is kept: at T = 4096, H = 3072 that would be 40% of
// the budget and halve the block height). Floor 16 rows: thinner GEMMs are memory-bound on any device,
// and below T = 160 the whole logits are small anyway.
int64_t choose_onepass_rows(int64_t requested, int64_t t, int64_t n, int64_t vocab, int64_t h, int64_t elt) {
  if (n == 0) return 0;
  if (requested > 0) return std::min(requested, n);
  const double budget = kBudgetShare * static_cast<double>(t) * static_cast<double>(vocab) * 4.0;
  const double row_elems = static_cast<double>(vocab) + (n < t ? 2.0 * static_cast<double>(h) : 0.0);
  const auto cap = std::clamp<int64_t>(static_cast<int64_t>(budget / (row_elems * static_cast<double>(elt))),
                                       std::min<int64_t>(n, 16), n);
  // Equal blocks (3686 tokens at a cap of 390: 10 x 369, not 9 x 390 + a thin 176).
  const int64_t blocks = (n + cap - 1) / cap;
  return (n + blocks - 1) / blocks;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// acc [V, H] fp32 += g^T @ h for a block of a bf16/fp16 one-pass loss: g [C, V], h [C, H]. On CUDA one GEMM
// writes fp32 (beta = 1 into the accumulator: nothing rounded before the sum). Where that GEMM does not
// exist (the CPU) the block's product is rounded once into `scratch` [V, H] (the gradient's own buffer)
// and added in fp32: one rounding per block still, but the running sum no longer loses small blocks.
// Once per process, on the first CUDA call: does this LibTorch's addmm with an fp32 output for bf16
// inputs exist and add into its fp32 input (ones + ones [2,3] @ ones [3,2] = 4)? Otherwise the portable way.
bool fp32_addmm_adds(const at::Tensor& like) {
  static const bool ok = [&] {
    try {
      at::Tensor acc = at::ones({2, 2}, like.options().dtype(at::kFloat));
      const at::Tensor a = at::ones({2, 3}, like.options().dtype(at::kBFloat16));
      at::addmm_out(acc, acc, a, a.t(), at::kFloat);
      return acc.equal(at::full({2, 2}, 4.0, acc.options()));
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return ok;
}

void add_block_grad_w(at::Tensor& acc, at::Tensor& scratch, const at::Tensor& g, const at::Tensor& h) {
  if (acc.is_cuda() && fp32_addmm_adds(acc)) {
    at::addmm_out(acc, acc, g.t(), h, at::kFloat);
    return;
  }
  at::mm_out(scratch, g.t(), h);
  acc.add_(scratch);
}

// What the forward computes and the buffers it reuses across token blocks. grad_h rows are written once
// (one GEMM over the whole vocabulary per token block), straight into the [T, H] result (through a
// [rows, H] buffer and a scatter when tokens are ignored); grad_W sums over token blocks, for bf16 in an
// fp32 [V, H] buffer rounded once at the end (see docs/loss.md).
struct OnePassBuffers {
  int64_t rows = 0;     // trained tokens per block
  bool gather = false;  // tokens are ignored: each block gathers its hidden rows
  bool fp32_sum = false;
  at::Tensor scale;     // [N] fp32 w_i
  at::Tensor lse;       // [N] fp32
  at::Tensor loss;      // [N] fp32 per-token CE
  at::Tensor grad_h;    // [T, H], or undefined when not wanted
  at::Tensor grad_w;    // [V, H], or undefined when not wanted
  at::Tensor grad_w32;  // [V, H] fp32 sum over blocks (bf16/fp16 with several blocks), or undefined
  at::Tensor flat;      // the [rows, V] logits buffer
  at::Tensor h_flat;    // [rows, H] gathered hidden rows (only when tokens are ignored)
  at::Tensor gh_flat;   // [rows, H] their gradient before the scatter (idem)
};

// hidden [T, H], weight [V, H].
OnePassBuffers one_pass_buffers(const at::Tensor& hidden, const at::Tensor& weight, const Call& call,
                                const LossWeights& w) {
  const Trained& tr = call.trained;
  const int64_t t = hidden.size(0);
  const int64_t h = hidden.size(1);
  const int64_t vocab = weight.size(0);
  const int64_t n = tr.n;
  const auto f32 = hidden.options().dtype(at::kFloat);
  OnePassBuffers b;
  b.rows = choose_onepass_rows(call.options->onepass_tokens, t, n, vocab, h, hidden.element_size());
  b.scale = row_weights(w, tr.groups, n, f32);
  b.lse = at::empty({n}, f32);
  b.loss = at::empty({n}, f32);
  b.gather = tr.rows.defined();
  if (call.need_h) b.grad_h = b.gather ? at::zeros({t, h}, hidden.options()) : at::empty({t, h}, hidden.options());
  if (call.need_w) b.grad_w = at::empty_like(weight);
  b.fp32_sum = call.need_w && n > b.rows &&
               (weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kHalf);
  if (b.fp32_sum) b.grad_w32 = at::zeros({vocab, h}, f32);
  b.flat = at::empty({b.rows * vocab}, hidden.options());
  if (b.gather) b.h_flat = at::empty({b.rows * h}, hidden.options());
  if (b.gather && call.need_h) b.gh_flat = at::empty({b.rows * h}, hidden.options());
  return b;
}

// Trained tokens [r0, r0 + nr): logits, lse and CE, then their share of both gradients.
void one_pass_block(const at::Tensor& hidden, const at::Tensor& weight, const Call& call, OnePassBuffers& b,
                    int64_t r0, int64_t nr) {
  const Trained& tr = call.trained;
  const int64_t h = hidden.size(1);
  const at::Tensor pos = b.gather ? tr.rows.narrow(0, r0, nr) : at::Tensor();  // [nr] positions in [0, T)
  at::Tensor h_rows;                                                           // [nr, H]
  if (b.gather) {
    h_rows = block_view(b.h_flat, nr, h);
    at::index_select_out(h_rows, hidden, 0, pos);
  } else {
    h_rows = tr.hidden.narrow(0, r0, nr);  // contiguous [T, H]: nothing is ignored
  }
  at::Tensor logits = block_view(b.flat, nr, weight.size(0));  // [nr, V]
  at::mm_out(logits, h_rows, weight.t());                      // [nr, H] @ [H, V]
  at::Tensor lse_rows = b.lse.narrow(0, r0, nr);
  at::Tensor loss_rows = b.loss.narrow(0, r0, nr);
  kernels::onepass_rows(logits, tr.labels.narrow(0, r0, nr), b.scale.narrow(0, r0, nr), lse_rows, loss_rows);
  if (call.need_h) {
    at::Tensor out = b.gather ? block_view(b.gh_flat, nr, h) : b.grad_h.narrow(0, r0, nr);
    grad_hidden_mm(out, logits, weight, false);  // [nr, V] @ [V, H]
    if (b.gather) b.grad_h.index_copy_(0, pos, out);
  }
  if (b.fp32_sum) {
    add_block_grad_w(b.grad_w32, b.grad_w, logits, h_rows);
  } else if (call.need_w) {
    if (r0 == 0) {
      at::mm_out(b.grad_w, logits.t(), h_rows);  // [V, nr] @ [nr, H]
    } else {
      b.grad_w.addmm_(logits.t(), h_rows);
    }
  }
}

// Stats, numeric check, reported weights and metrics of a finished one-pass forward.
LossMetrics one_pass_report(const at::Tensor& hidden, const at::Tensor& weight, const Call& call,
                            const OnePassBuffers& b, const LossWeights& w) {
  const FusedLossOptions& options = *call.options;
  const GroupStats stats = local_stats(b.loss, call.trained.groups, call.trained.n);
  if (options.check_numerics && !std::isfinite(stats.total_loss())) {
    fail_numeric("fused_group_loss", stats.total_loss(), hidden, weight);  // the gradients are dropped
  }
  // Reported weights: the caller's, or the rules applied to the real stats (same coefficients as
  // the counts gave; only `worst` may now be named).
  LossWeights reported = w;
  if (!options.known_weights) {
    reported = compute_loss_weights(stats, options.lambda, options.objective);
    SFTGO_CHECK(reported.coef_all == w.coef_all && reported.coef_group[0] == w.coef_group[0] &&
                    reported.coef_group[1] == w.coef_group[1],
                ErrorKind::kInternal, "loss: coefficients from the counts differ from those of the stats");
  }
  const LossMetrics metrics = compute_loss_metrics(stats, reported, options.lambda);
  if (call.info != nullptr) {
    call.info->local_stats = stats;
    call.info->weights = reported;
    call.info->metrics = metrics;
    call.info->chunk_vocab = weight.size(0);
    call.info->onepass_tokens = b.rows;
  }
  return metrics;
}

// What backward needs besides the saved gradients [grad_h, grad_w].
struct OnePassState {
  bool used = false;  // the gradients were handed out already (they are scaled in place)
};

class OnePassLossFn : public torch::autograd::Function<OnePassLossFn> {
 public:
  // hidden [T, H], weight [V, H]; w: coefficients fixed before the forward. The gradients are computed
  // here for an upstream gradient of 1 and saved.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight, const Call* call,
                            const LossWeights* w) {
    OnePassBuffers b = one_pass_buffers(hidden, weight, *call, *w);
    for (int64_t r0 = 0; r0 < call->trained.n; r0 += b.rows) {
      one_pass_block(hidden, weight, *call, b, r0, std::min(b.rows, call->trained.n - r0));
    }
    if (b.fp32_sum) {
      b.grad_w.copy_(b.grad_w32);  // the one rounding
      b.grad_w32 = at::Tensor();
    }
    const LossMetrics metrics = one_pass_report(hidden, weight, *call, b, *w);
    save_state(ctx, OnePassState{});
    ctx->save_for_backward({b.grad_h, b.grad_w});
    return at::scalar_tensor(metrics.loss, hidden.options().dtype(at::kFloat));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();  // [grad_h [T, H], grad_w [V, H]], either undefined
    variable_list grads(4);                          // hidden, weight, call, w
    // The gradients were computed in forward for an upstream gradient of 1; scale them by the real one.
    OnePassState& state = saved_state<OnePassState>(ctx);
    SFTGO_CHECK_HINT(!state.used, ErrorKind::kUsage,
                     "set FusedLossOptions::pass = kTwoPass to backward through the same graph twice",
                     "loss: second backward through a one-pass fused loss (its gradients were handed out already)");
    state.used = true;
    const at::Tensor& go = grad_outputs[0];
    // The usual loss.backward() on the CPU: nothing to do. Otherwise scale in place: the saved
    // gradients are used once (checked above), so the [T, H] and [V, H] buffers are reused instead
    // of copied, and a CUDA grad_output stays on the device (no host sync). Same product as
    // saved * go, element for element.
    const bool unit = go.is_cpu() && go.item<float>() == 1.0f;
    for (int i = 0; i < 2; ++i) {
      if (!ctx->needs_input_grad(i) || !saved[i].defined()) continue;
      grads[i] = unit ? saved[i] : at::Tensor(saved[i]).mul_(go.to(saved[i].scalar_type()));
    }
    return grads;
  }
};

}  // namespace

at::Tensor one_pass_loss(const at::Tensor& hidden, const at::Tensor& weight, Call& call, const LossWeights& w) {
  return OnePassLossFn::apply(hidden, weight, &call, &w);
}

}  // namespace sftgo::loss::detail
