// Fused LM head + SFT-GO loss (CPU and CUDA). Its test oracle, the materialised reference, is
// tests/loss/reference_loss.cpp.
//
// Algorithm choice: two-pass with recomputation, blocked over the vocabulary.
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
// One pass (backward-in-forward, Liger style) when the per-token coefficients are known before the
// forward: objective ce, rho1 with static groups, sftgo with lambda = 0 or an empty group
// (weights_from_counts), or step scope once the trainer knows the step's statistics
// (options.known_weights). Then each block of C trained tokens gets its full [C, V] logits, the row
// kernel turns them into w_i * (softmax - onehot) right after their lse, and grad_h[blk] = G @ W,
// grad_W += G^T @ h_blk follow at once: 3 LM-head GEMMs, nothing recomputed, the gradients travel to
// backward() as saved tensors. It blocks over tokens (not the vocabulary) because the softmax of a
// row needs the row's lse before any of its entries can enter grad_W = sum_r G[r,:]^T h_r; the price
// is thinner GEMMs (M = C ~ 10% of T) and a read-modify-write of grad_W per token block.
// Two passes otherwise: the SFT-GO gradient of a token depends on which group is worst and on
// N_worst, known only after *all* tokens of the forward - and with step scope only after the
// trainer's hook has seen the stats of every micro-batch and rank. Computing gradients in forward
// would then need one unscaled weight-gradient accumulator per group (an extra fp32 [V, H], 25-100%
// of the fp32 [T, V] logits at T = 4k-16k, H = 4096), breaking the <= 10% memory goal. Recomputation
// costs one extra [N, H] x [H, Vb] GEMM per block (4 instead of 3 LM-head GEMMs in total), which is
// partly repaid by never writing/reading the [T, V] logits, their log_softmax and its gradient
// (memory-bound passes), and by skipping ignored (prompt) tokens entirely. The forward alone (eval,
// no_grad) does 1 matmul. A groups_hook (Rho-1) always takes two passes: the groups, hence the
// coefficients, come from this forward's losses.
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "sftgo/core/error.h"
#include "sftgo/core/torch_grad.h"  // take_grad_for_accumulation (accumulate_into_grad), shared with the model
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
  at::Tensor hidden;  // [N, H] contiguous; the one-pass path leaves it undefined when rows is defined
                      // (it gathers each token block instead: see compact_hidden)
  at::Tensor labels;  // [N] int64 in [0, V)
  at::Tensor groups;  // [N] bool; undefined for objective ce
  int64_t n = 0;
  int64_t important = -1;  // trained tokens in group 1, counted with n (-1: groups not known yet)
};

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

// The two-pass path keeps all N trained rows of hidden compacted ([N, H], saved for the backward).
void compact_hidden(Trained& tr, const at::Tensor& hidden) {
  if (!tr.hidden.defined()) tr.hidden = hidden.index_select(0, tr.rows);
}

// Share of the fp32 [T, V] logits that the auto block sizes give our temporaries: the goal is 10%
// extra memory, and the BLAS's own packing buffers and the small [N] tensors take about 1% more at
// T = 4096 (measured: one pass at a 10% budget peaked at 10.5% in bench_loss).
constexpr double kBudgetShare = 0.09;

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

// One-pass path: trained tokens per block, whose [rows, V] logits live in one buffer of the input
// dtype. Same budget as above (kBudgetShare of the fp32 [T, V] logits); when tokens are ignored each block
// also gathers its [rows, H] hidden rows and its [rows, H] d hidden before scattering it, so a row
// costs V + 2H elements (nothing [N, H]-sized is kept: at T = 4096, H = 3072 that would be 40% of
// the budget and halve the block height). Floor 16 rows: thinner GEMMs are memory-bound on any device,
// and below T = 160 the whole logits are small anyway.
// kAuto takes the one-pass path only when a token block has at least this many rows (or holds every
// trained token). Thinner blocks make GEMMs that re-stream all of W (and read-modify-write grad_W) per
// block: on the CPU, blocks of ~T/10 = 21 rows (T = 256) measured 2.3x unfused CE against 1.4x for
// two passes (docs/loss.md). The value 256 is a judgement, not a measured crossover: GEMMs with
// M >= 256 ran at the speed of the full-batch ones in a CPU probe; the GPU is not measured yet.
constexpr int64_t kOnePassMinRows = 256;

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

// ---- row kernels over one vocabulary block: logits [N, Vb] contiguous, columns [col0, col0 + Vb) ----

struct RowState {
  at::Tensor max, sum, label_logit;  // [N] fp32 running softmax state and the label's logit
};

template <typename Scalar>
void cpu_softmax_block(const at::Tensor& logits, int64_t col0, const int64_t* labels, RowState& st, float* lse,
                       float* loss) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  const Scalar* base = logits.const_data_ptr<Scalar>();
  float* smax = st.max.mutable_data_ptr<float>();
  float* ssum = st.sum.mutable_data_ptr<float>();
  float* label_logit = st.label_logit.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Scalar* row = base + r * cols;
      const kernels::SoftmaxState merged = kernels::softmax_state_merge(kernels::SoftmaxState{smax[r], ssum[r]},
                                                                        kernels::row_softmax_state(row, 0, cols));
      smax[r] = merged.max;
      ssum[r] = merged.sum;
      const int64_t local = labels[r] - col0;
      if (local >= 0 && local < cols) label_logit[r] = static_cast<float>(row[local]);
      if (lse != nullptr) {
        lse[r] = kernels::softmax_state_lse(merged);
        loss[r] = kernels::cross_entropy_from_lse(lse[r], label_logit[r]);
      }
    }
  });
}

template <typename Scalar>
void cpu_ce_grad(at::Tensor& logits, int64_t col0, const int64_t* labels, const float* lse, const float* scale) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  Scalar* base = logits.mutable_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      kernels::row_cross_entropy_grad(base + r * cols, cols, col0, labels[r], lse[r], scale[r]);
    }
  });
}

// Merges a block into the running states; on the last block (lse/loss defined) finishes lse and CE.
void row_softmax_block(const at::Tensor& logits, int64_t col0, const at::Tensor& labels, RowState& st, at::Tensor* lse,
                       at::Tensor* loss) {
  float* lse_p = lse != nullptr ? lse->mutable_data_ptr<float>() : nullptr;
  float* loss_p = loss != nullptr ? loss->mutable_data_ptr<float>() : nullptr;
  if (logits.is_cuda()) {
#ifdef SFTGO_LOSS_CUDA
    const auto type = logits.scalar_type() == at::kFloat ? kernels::LogitType::kFloat32 : kernels::LogitType::kBFloat16;
    const char* err = kernels::row_softmax_block_cuda(
        logits.const_data_ptr(), type, logits.size(0), logits.size(1), logits.stride(0), col0,
        labels.const_data_ptr<int64_t>(), st.max.mutable_data_ptr<float>(), st.sum.mutable_data_ptr<float>(),
        st.label_logit.mutable_data_ptr<float>(), lse_p, loss_p, c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA softmax kernel failed: ", err);
    return;
#else
    SFTGO_FAIL_HINT(ErrorKind::kUsage, "reconfigure with -DSFTGO_CUDA=ON (needs nvcc)",
                    "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_softmax_block<float>(logits, col0, labels.const_data_ptr<int64_t>(), st, lse_p, loss_p);
  } else {
    cpu_softmax_block<c10::BFloat16>(logits, col0, labels.const_data_ptr<int64_t>(), st, lse_p, loss_p);
  }
}

// In place: logits [N, Vb] <- scale[r] * (softmax - onehot(label)) over the block's columns.
void row_ce_grad(at::Tensor& logits, int64_t col0, const at::Tensor& labels, const at::Tensor& lse,
                 const at::Tensor& scale) {
  if (logits.is_cuda()) {
#ifdef SFTGO_LOSS_CUDA
    const auto type = logits.scalar_type() == at::kFloat ? kernels::LogitType::kFloat32 : kernels::LogitType::kBFloat16;
    const char* err = kernels::row_cross_entropy_grad_cuda(
        logits.mutable_data_ptr(), type, logits.size(0), logits.size(1), logits.stride(0), col0,
        labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(), scale.const_data_ptr<float>(),
        c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA gradient kernel failed: ", err);
    return;
#else
    SFTGO_FAIL(ErrorKind::kUsage, "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_ce_grad<float>(logits, col0, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                       scale.const_data_ptr<float>());
  } else {
    cpu_ce_grad<c10::BFloat16>(logits, col0, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                               scale.const_data_ptr<float>());
  }
}

// One pass over full rows: logits [R, V] contiguous -> lse, loss [R]; then in place
// logits <- scale[r] * (softmax - onehot(label)). On the CPU one parallel loop per row, so the row
// is read for max, exp-sum and gradient while it is still in cache.
template <typename Scalar>
void cpu_onepass_rows(at::Tensor& logits, const int64_t* labels, const float* scale, float* lse, float* loss) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  Scalar* base = logits.mutable_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Scalar* row = base + r * cols;
      lse[r] = kernels::softmax_state_lse(kernels::row_softmax_state(row, 0, cols));
      loss[r] = kernels::cross_entropy_from_lse(lse[r], static_cast<float>(row[labels[r]]));
      kernels::row_cross_entropy_grad(row, cols, 0, labels[r], lse[r], scale[r]);
    }
  });
}

// labels, scale, lse, loss: [R]. CUDA: the two-pass kernels over one full-width block.
void onepass_rows(at::Tensor& logits, const at::Tensor& labels, const at::Tensor& scale, at::Tensor& lse,
                  at::Tensor& loss) {
  if (logits.is_cuda()) {
    const int64_t r = logits.size(0);
    const auto f32 = lse.options();
    RowState st{at::full({r}, -INFINITY, f32), at::zeros({r}, f32), at::zeros({r}, f32)};
    row_softmax_block(logits, 0, labels, st, &lse, &loss);
    row_ce_grad(logits, 0, labels, lse, scale);
    return;
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_onepass_rows<float>(logits, labels.const_data_ptr<int64_t>(), scale.const_data_ptr<float>(),
                            lse.mutable_data_ptr<float>(), loss.mutable_data_ptr<float>());
  } else {
    cpu_onepass_rows<c10::BFloat16>(logits, labels.const_data_ptr<int64_t>(), scale.const_data_ptr<float>(),
                                    lse.mutable_data_ptr<float>(), loss.mutable_data_ptr<float>());
  }
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

// View of the first rows * cols elements of a flat buffer as a contiguous [rows, cols] matrix, so one
// allocation serves every block including the narrower last one.
at::Tensor block_view(const at::Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
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
  bool need_h = false;  // gradients wanted (grad mode on and the input requires grad)
  bool need_w = false;
};

bool all_zero(const LossWeights& w) { return w.coef_all == 0.0 && w.coef_group[0] == 0.0 && w.coef_group[1] == 0.0; }

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

class FusedGroupLossFn : public torch::autograd::Function<FusedGroupLossFn> {
 public:
  // labels/groups travel inside `call` rather than as tensor arguments: they are not differentiable
  // and groups may be undefined (objective ce), which autograd's input bookkeeping rejects.
  // hidden [T, H], weight [V, H].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const Call* call) {
    const FusedLossOptions& options = *call->options;
    const int64_t t = hidden.size(0);
    const int64_t h = hidden.size(1);
    const int64_t vocab = weight.size(0);
    const auto f32 = hidden.options().dtype(at::kFloat);
    Trained tr = select_trained(hidden, call->labels, call->groups, options, vocab);
    const int64_t n = tr.n;
    ctx->saved_data["onepass"] = false;

    // Coefficients before the forward: given by the caller, or following from the counts alone.
    std::optional<LossWeights> ahead;
    if (!options.groups_hook) {
      if (options.known_weights) {
        ahead = options.known_weights;
      } else if (!options.weights_hook) {
        ahead = weights_from_counts(count_groups(tr), options.lambda, options.objective);
      }
    }
    const bool need_grad = call->need_h || call->need_w;
    SFTGO_CHECK_HINT(options.pass != LossPass::kOnePass || !need_grad || ahead.has_value(), ErrorKind::kUsage,
                     "use pass auto, or give known_weights",
                     "loss: one pass requested but the coefficients are not known before the forward (objective ",
                     objective_name(options.objective), ", lambda ", options.lambda,
                     options.weights_hook ? ", weights_hook set" : "", ")");
    if (need_grad && n > 0 && ahead && !all_zero(*ahead) && options.pass != LossPass::kTwoPass) {
      // kAuto: one pass only when its token blocks are wide enough to beat the fourth GEMM of two
      // passes (see kOnePassMinRows); kOnePass: always.
      const int64_t c = choose_onepass_rows(options.onepass_tokens, t, n, vocab, hidden.size(1), hidden.element_size());
      if (options.pass == LossPass::kOnePass || c >= std::min(n, kOnePassMinRows)) {
        return forward_one_pass(ctx, hidden, weight, *call, tr, *ahead);
      }
    }

    if (n > 0 && tr.rows.defined()) compact_hidden(tr, hidden);
    const int64_t rows = options.chunk_tokens > 0 ? std::min(options.chunk_tokens, n) : n;
    const int64_t block = choose_block_cols(options.chunk_vocab, t, n, rows, vocab, h, hidden.element_size());

    at::Tensor lse = at::empty({n}, f32);   // [N]
    at::Tensor loss = at::empty({n}, f32);  // [N]
    if (n > 0) {
      const RowState all{at::full({n}, -INFINITY, f32), at::zeros({n}, f32), at::zeros({n}, f32)};
      const at::Tensor flat = at::empty({rows * block}, hidden.options());  // the [rows, Vb] block buffer
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nr = std::min(rows, n - r0);
        const at::Tensor h_rows = tr.hidden.narrow(0, r0, nr);  // [nr, H]
        const at::Tensor labels_rows = tr.labels.narrow(0, r0, nr);
        RowState st{all.max.narrow(0, r0, nr), all.sum.narrow(0, r0, nr), all.label_logit.narrow(0, r0, nr)};
        at::Tensor lse_rows = lse.narrow(0, r0, nr);
        at::Tensor loss_rows = loss.narrow(0, r0, nr);
        for (int64_t v0 = 0; v0 < vocab; v0 += block) {
          const int64_t cols = std::min(block, vocab - v0);
          at::Tensor logits = block_view(flat, nr, cols);
          at::mm_out(logits, h_rows, weight.narrow(0, v0, cols).t());  // [nr, H] @ [H, Vb]
          const bool last = v0 + cols >= vocab;
          row_softmax_block(logits, v0, labels_rows, st, last ? &lse_rows : nullptr, last ? &loss_rows : nullptr);
        }
      }
    }
    if (options.groups_hook) {
      // The hook must not rank NaNs: check the losses before it sees them.
      if (options.check_numerics && n > 0) {
        const double sum = loss.sum(at::kDouble).item<double>();
        if (!std::isfinite(sum)) fail_numeric("fused_group_loss", sum, hidden, weight);
      }
      apply_groups_hook(options, loss, tr, t, hidden.device());
    }
    const GroupStats stats = local_stats(loss, tr.groups, n);
    if (options.check_numerics && !std::isfinite(stats.total_loss())) {
      fail_numeric("fused_group_loss", stats.total_loss(), hidden, weight);
    }
    const LossWeights w = options.known_weights ? *options.known_weights : resolve_weights(stats, options);
    const LossMetrics metrics = compute_loss_metrics(stats, w, options.lambda);
    if (call->info != nullptr) {
      call->info->local_stats = stats;
      call->info->weights = w;
      call->info->metrics = metrics;
      call->info->chunk_vocab = block;
      call->info->onepass_tokens = 0;
    }

    const bool zero_weights = all_zero(w);
    ctx->saved_data["n"] = n;
    ctx->saved_data["t"] = t;
    ctx->saved_data["block"] = block;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["zero"] = zero_weights || n == 0;
    ctx->saved_data["acc"] = options.accumulate_into_grad;
    if (n > 0 && !zero_weights) {
      const at::Tensor scale = row_weights(w, tr.groups, n, f32);  // [N] w_i
      ctx->save_for_backward({tr.hidden, weight, tr.labels, lse, scale, tr.rows});
    } else {
      ctx->save_for_backward({hidden, weight});  // shapes for the zero gradients
    }
    return at::scalar_tensor(metrics.loss, f32);
  }

  // Backward-in-forward (see the file comment). hidden [T, H], weight [V, H]; tr: the N trained tokens;
  // w: coefficients fixed before the forward.
  static at::Tensor forward_one_pass(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                                     const Call& call, const Trained& tr, const LossWeights& w) {
    const FusedLossOptions& options = *call.options;
    const int64_t t = hidden.size(0);
    const int64_t h = hidden.size(1);
    const int64_t vocab = weight.size(0);
    const int64_t n = tr.n;
    const auto f32 = hidden.options().dtype(at::kFloat);
    const int64_t rows = choose_onepass_rows(options.onepass_tokens, t, n, vocab, h, hidden.element_size());
    const at::Tensor scale = row_weights(w, tr.groups, n, f32);  // [N] w_i
    at::Tensor lse = at::empty({n}, f32);                        // [N]
    at::Tensor loss = at::empty({n}, f32);                       // [N]
    // grad_h rows are written once (one GEMM over the whole vocabulary per token block), straight into
    // the [T, H] result (through a [rows, H] buffer and a scatter when tokens are ignored); grad_W sums
    // over token blocks, for bf16 in an fp32 [V, H] buffer rounded once at the end (see docs/loss.md).
    const bool gather = tr.rows.defined();
    at::Tensor grad_h;  // [T, H]
    if (call.need_h) grad_h = gather ? at::zeros({t, h}, hidden.options()) : at::empty({t, h}, hidden.options());
    at::Tensor grad_w = call.need_w ? at::empty_like(weight) : at::Tensor();  // [V, H]
    const bool fp32_sum = call.need_w && n > rows &&
                          (weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kHalf);
    at::Tensor grad_w32 = fp32_sum ? at::zeros({vocab, h}, f32) : at::Tensor();  // [V, H] fp32
    const at::Tensor flat = at::empty({rows * vocab}, hidden.options());      // [rows, V] buffer
    // [rows, H] buffers for the gathered hidden rows and their gradient (only when tokens are ignored).
    const at::Tensor h_flat = gather ? at::empty({rows * h}, hidden.options()) : at::Tensor();
    const at::Tensor gh_flat = gather && call.need_h ? at::empty({rows * h}, hidden.options()) : at::Tensor();
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t nr = std::min(rows, n - r0);
      const at::Tensor pos = gather ? tr.rows.narrow(0, r0, nr) : at::Tensor();  // [nr] positions in [0, T)
      at::Tensor h_rows;                                                         // [nr, H]
      if (gather) {
        h_rows = block_view(h_flat, nr, h);
        at::index_select_out(h_rows, hidden, 0, pos);
      } else {
        h_rows = tr.hidden.narrow(0, r0, nr);  // contiguous [T, H]: nothing is ignored
      }
      at::Tensor logits = block_view(flat, nr, vocab);  // [nr, V]
      at::mm_out(logits, h_rows, weight.t());           // [nr, H] @ [H, V]
      at::Tensor lse_rows = lse.narrow(0, r0, nr);
      at::Tensor loss_rows = loss.narrow(0, r0, nr);
      onepass_rows(logits, tr.labels.narrow(0, r0, nr), scale.narrow(0, r0, nr), lse_rows, loss_rows);
      if (call.need_h) {
        at::Tensor out = gather ? block_view(gh_flat, nr, h) : grad_h.narrow(0, r0, nr);
        grad_hidden_mm(out, logits, weight, false);  // [nr, V] @ [V, H]
        if (gather) grad_h.index_copy_(0, pos, out);
      }
      if (fp32_sum) {
        add_block_grad_w(grad_w32, grad_w, logits, h_rows);
      } else if (call.need_w) {
        if (r0 == 0) {
          at::mm_out(grad_w, logits.t(), h_rows);  // [V, nr] @ [nr, H]
        } else {
          grad_w.addmm_(logits.t(), h_rows);
        }
      }
    }
    if (fp32_sum) {
      grad_w.copy_(grad_w32);  // the one rounding
      grad_w32 = at::Tensor();
    }
    const GroupStats stats = local_stats(loss, tr.groups, n);
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
      call.info->chunk_vocab = vocab;
      call.info->onepass_tokens = rows;
    }
    ctx->saved_data["onepass"] = true;
    ctx->saved_data["used"] = false;
    ctx->save_for_backward({grad_h, grad_w});
    return at::scalar_tensor(metrics.loss, f32);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool need_h = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    const auto saved = ctx->get_saved_variables();
    variable_list grads(3);  // hidden, weight, call
    if (ctx->saved_data["onepass"].toBool()) {
      // The gradients were computed in forward for an upstream gradient of 1; scale them by the real one.
      SFTGO_CHECK_HINT(!ctx->saved_data["used"].toBool(), ErrorKind::kUsage,
                       "set FusedLossOptions::pass = kTwoPass to backward through the same graph twice",
                       "loss: second backward through a one-pass fused loss (its gradients were handed out already)");
      ctx->saved_data["used"] = true;
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
    const int64_t t = ctx->saved_data["t"].toInt();
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
    const int64_t block = ctx->saved_data["block"].toInt();
    const int64_t rows_per_pass = ctx->saved_data["rows"].toInt();
    const int64_t vocab = weight.size(0);
    // Upstream gradient folded into the per-row scale on the device: no host sync.
    const at::Tensor scale = saved[4] * grad_outputs[0].to(at::kFloat);  // [N]
    const bool fp32 = hidden_c.scalar_type() == at::kFloat;

    // d hidden sums over vocabulary blocks: accumulate in fp32 (directly in the result for fp32
    // inputs; a separate fp32 [N, H] for bf16). d W rows of a block are written once, by one GEMM.
    at::Tensor grad_hc;  // [N, H]
    if (need_h) grad_hc = at::zeros({n, hidden_c.size(1)}, hidden_c.options().dtype(at::kFloat));
    // One pass over the tokens: each block's d W rows are final after one GEMM, so they can go into
    // an accumulated weight.grad (taken) through a [Vb, H] buffer instead of a whole new [V, H].
    at::Tensor taken;  // [V, H]
    if (need_w && rows_per_pass >= n && ctx->saved_data["acc"].toBool()) taken = take_grad_for_accumulation(weight);
    at::Tensor grad_w;  // [V, H] or, into `taken`, one [Vb, H] block at a time
    if (need_w)
      grad_w = taken.defined() ? at::empty({std::min(block, vocab), weight.size(1)}, weight.options())
                               : at::empty_like(weight);
    if (need_h || need_w) {
      const at::Tensor flat = at::empty({rows_per_pass * block}, hidden_c.options());
      for (int64_t r0 = 0; r0 < n; r0 += rows_per_pass) {
        const int64_t nr = std::min(rows_per_pass, n - r0);
        const at::Tensor h_rows = hidden_c.narrow(0, r0, nr);  // [nr, H]
        const at::Tensor labels_rows = labels_c.narrow(0, r0, nr);
        const at::Tensor lse_rows = lse.narrow(0, r0, nr);
        const at::Tensor scale_rows = scale.narrow(0, r0, nr);
        for (int64_t v0 = 0; v0 < vocab; v0 += block) {
          const int64_t cols = std::min(block, vocab - v0);
          const at::Tensor w_blk = weight.narrow(0, v0, cols);  // [Vb, H]
          at::Tensor logits = block_view(flat, nr, cols);       // [nr, Vb]
          at::mm_out(logits, h_rows, w_blk.t());
          row_ce_grad(logits, v0, labels_rows, lse_rows, scale_rows);  // now d loss / d logits
          if (need_h) {
            at::Tensor gh = grad_hc.narrow(0, r0, nr);
            if (fp32) {
              grad_hidden_mm(gh, logits, w_blk, true);  // += [nr, Vb] @ [Vb, H]
            } else {
              gh.add_(at::mm(logits, w_blk));
            }
          }
          if (need_w && taken.defined()) {
            // The same GEMM as below into a buffer of the same [cols, H] layout, then AccumulateGrad's
            // elementwise old + new.
            at::Tensor out = grad_w.narrow(0, 0, cols);
            at::mm_out(out, logits.t(), h_rows);  // [Vb, nr] @ [nr, H]
            taken.narrow(0, v0, cols).add_(out);
          } else if (need_w) {
            at::Tensor out = grad_w.narrow(0, v0, cols);
            if (r0 == 0) {
              at::mm_out(out, logits.t(), h_rows);  // [Vb, nr] @ [nr, H]
            } else {
              out.addmm_(logits.t(), h_rows);  // only with chunk_tokens: later token chunks accumulate
            }
          }
        }
      }
    }
    if (need_h) {
      if (!fp32) grad_hc = grad_hc.to(hidden_c.scalar_type());
      grads[0] =
          rows.defined() ? at::zeros({t, hidden_c.size(1)}, hidden_c.options()).index_copy_(0, rows, grad_hc) : grad_hc;
    }
    if (need_w) grads[1] = taken.defined() ? std::move(taken) : grad_w;
    return grads;
  }
};

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
  return FusedGroupLossFn::apply(hidden, weight, &call);
}

}  // namespace sftgo::loss
