// Private to src/loss: what the fused loss's entry point (fused_loss.cpp) and its two algorithms
// (one_pass.cpp, two_pass.cpp) share. Names live in sftgo::loss::detail, not in anonymous namespaces,
// because the unity build compiles the three files as one translation unit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "sftgo/loss/group_loss.h"

namespace sftgo::loss::detail {

// Trained tokens, compacted so that ignored (prompt) tokens cost no matmul work.
struct Trained {
  at::Tensor rows;    // [N] int64 positions in [0, T); undefined when every token is trained
  at::Tensor hidden;  // [N, H] contiguous; the one-pass path leaves it undefined when rows is defined
                      // (it gathers each token block instead; the two-pass path compacts all of it)
  at::Tensor labels;  // [N] int64 in [0, V)
  at::Tensor groups;  // [N] bool; undefined for objective ce
  int64_t n = 0;
  int64_t important = -1;  // trained tokens in group 1, counted with n (-1: groups not known yet)
};

// One call of fused_group_loss, handed to the autograd Function of the chosen algorithm. labels/groups
// travel here rather than as tensor arguments: they are not differentiable and groups may be undefined
// (objective ce), which autograd's input bookkeeping rejects.
struct Call {
  at::Tensor labels;  // [T] int64
  at::Tensor groups;  // [T] or undefined
  const FusedLossOptions* options = nullptr;
  LossInfo* info = nullptr;
  bool need_h = false;  // gradients wanted (grad mode on and the input requires grad)
  bool need_w = false;
  Trained trained{};  // selected by the entry point before the algorithm runs
};

// The algorithms. hidden [T, H], weight [V, H]; `w` holds the coefficients fixed before the forward.
at::Tensor one_pass_loss(const at::Tensor& hidden, const at::Tensor& weight, Call& call, const LossWeights& w);
at::Tensor two_pass_loss(const at::Tensor& hidden, const at::Tensor& weight, Call& call);

// ---- block sizes ----

// Share of the fp32 [T, V] logits that the auto block sizes give our temporaries: the goal is 10%
// extra memory, and the BLAS's own packing buffers and the small [N] tensors take about 1% more at
// T = 4096 (measured: one pass at a 10% budget peaked at 10.5% in bench_loss).
constexpr double kBudgetShare = 0.09;

// kAuto takes the one-pass path only when a token block has at least this many rows (or holds every
// trained token). Thinner blocks make GEMMs that re-stream all of W (and read-modify-write grad_W) per
// block: on the CPU, blocks of ~T/10 = 21 rows (T = 256) measured 2.3x unfused CE against 1.4x for
// two passes (docs/loss.md). The value 256 is a judgement, not a measured crossover: GEMMs with
// M >= 256 ran at the speed of the full-batch ones in a CPU probe; the GPU is not measured yet.
constexpr int64_t kOnePassMinRows = 256;

// Trained tokens per one-pass block (one_pass.cpp explains the budget).
int64_t choose_onepass_rows(int64_t requested, int64_t t, int64_t n, int64_t vocab, int64_t h, int64_t elt);

// ---- shared pieces of both algorithms (fused_loss.cpp) ----

std::string sizes_str(const at::Tensor& t);

// Raised when the loss sum is not finite; names the input that carries the NaN/Inf.
[[noreturn]] void fail_numeric(const char* where, double loss_sum, const at::Tensor& hidden, const at::Tensor& weight);

// out [nr, H] = g [nr, K] @ w [K, H], or out += g @ w when accumulate (thin CPU blocks in K slices).
void grad_hidden_mm(at::Tensor& out, const at::Tensor& g, const at::Tensor& w, bool accumulate);

// Local stats from per-token CE [N] fp32 (and groups [N] bool): one small device->host copy.
GroupStats local_stats(const at::Tensor& loss, const at::Tensor& groups, int64_t n);

// w_i = coef_all + coef_group[g_i] per trained token: [N] fp32.
at::Tensor row_weights(const LossWeights& w, const at::Tensor& groups, int64_t n, const at::TensorOptions& opts);

inline bool all_zero(const LossWeights& w) {
  return w.coef_all == 0.0 && w.coef_group[0] == 0.0 && w.coef_group[1] == 0.0;
}

// View of the first rows * cols elements of a flat buffer as a contiguous [rows, cols] matrix, so one
// allocation serves every block including the narrower last one.
inline at::Tensor block_view(const at::Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// ---- typed saved state of an autograd Function ----
// The non-tensor state that a forward leaves for its backward, kept as one C++ struct in the context
// (tensors still go through save_for_backward, which guards them against in-place changes).

template <typename State>
struct StateHolder : torch::CustomClassHolder {
  explicit StateHolder(State s) : value(std::move(s)) {}
  State value;
};

inline constexpr const char* kStateKey = "state";

template <typename State>
void save_state(torch::autograd::AutogradContext* ctx, State state) {
  ctx->saved_data[kStateKey] = c10::IValue::make_capsule(c10::make_intrusive<StateHolder<State>>(std::move(state)));
}

// A reference into the context: valid for the backward call that reads it.
template <typename State>
State& saved_state(torch::autograd::AutogradContext* ctx) {
  const c10::intrusive_ptr<torch::CustomClassHolder> blob = ctx->saved_data.at(kStateKey).toCapsule();
  return static_cast<StateHolder<State>*>(blob.get())->value;
}

}  // namespace sftgo::loss::detail
