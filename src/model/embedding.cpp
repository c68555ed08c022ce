// The token embedding: its backward adds into an accumulated .grad in place (untied) or into the tied
// LM head's gradient (tied), bit for bit the sums of LibTorch's dense embedding gradient.
#include "sftgo/model/llama.h"

#include <torch/torch.h>

#include <utility>

#include "sftgo/core/torch_grad.h"  // take_grad_for_accumulation, shared with the fused loss

namespace sftgo::model {

using torch::Tensor;

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, const torch::TensorOptions& options) {
  weight = register_parameter("weight", detail::new_parameter({vocab, dim}, options));
}

namespace {
// at::embedding whose backward, when allowed and weight.grad() already holds an accumulated gradient
// (the second and later micro-batches of a step), adds the touched rows into that tensor and hands it
// back: AccumulateGrad finds .grad empty, takes it (no copy) and runs its hooks as usual. Otherwise the
// usual dense [V, H] gradient, which AccumulateGrad adds with `grad += new`. The in-place rows equal
// that sum bit for bit: embedding_dense_backward over ids renumbered 0..U-1 in sorted order forms each
// row's sum from +0 in token order exactly as over the whole table, and old + new is one add per
// element; rows not touched would get + (+0.0), which changes nothing (a sum started at +0.0 is never
// -0.0).
//
// Tied to the LM head instead (`mode` kTied), the head's dense [V, H] gradient h reaches autograd first
// (the loss is the last op of the forward). Autograd would add the dense embedding gradient e to it
// out of place (h + e: a second dense [V, H]); here the rows e touched go into h in place instead,
// through a TiedGradSlot that this forward shares with the head's alias (EmbeddingImpl::as_head):
// h[u] + e[u] per touched element (IEEE addition commutes, so bit for bit the dense sum), other rows
// h where the dense path had h + (+0.0) (equal unless h is -0.0, which a GEMM started at +0 does not
// produce). Should this backward run first, its rows go to autograd as a coalesced sparse gradient,
// which autograd adds into the dense h in place when that arrives second.
enum class EmbeddingGradMode : int64_t { kDense = 0, kAccumulate = 1, kTied = 2 };

// What the two halves of one tied micro-batch (the table's forward, its use as the head) share.
struct TiedGradSlot : torch::CustomClassHolder {
  bool embedding_attached = false;
  bool head_attached = false;
  bool embedding_done = false;  // the embedding's backward ran (its rows went to autograd, sparse)
  Tensor head_grad;             // [V, H] the head's gradient, held until the embedding adds its rows
};

// The slot of this micro-batch: the one the other half left pending, else a new one left pending.
// The caller may form the head weight before or after the forward, so either half may come first.
c10::intrusive_ptr<TiedGradSlot> pair_tied_slot(c10::intrusive_ptr<torch::CustomClassHolder>& pending, bool head) {
  if (pending) {
    auto slot = c10::static_intrusive_pointer_cast<TiedGradSlot>(std::exchange(pending, {}));
    if ((head ? slot->embedding_attached : slot->head_attached)) {
      (head ? slot->head_attached : slot->embedding_attached) = true;
      return slot;
    }  // else an unpaired earlier half of the same kind: left alone (its backward stays correct)
  }
  auto slot = c10::make_intrusive<TiedGradSlot>();
  (head ? slot->head_attached : slot->embedding_attached) = true;
  pending = slot;
  return slot;
}

c10::intrusive_ptr<TiedGradSlot> slot_of(torch::autograd::AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<TiedGradSlot>(ctx->saved_data["slot"].toCapsule());
}

// The rows a batch touched: ids [B, S] -> (unique [U] sorted, rows [U, H]), each row summed over its
// tokens from +0 in token order, exactly as the dense backward sums it.
std::pair<Tensor, Tensor> embedding_rows(const Tensor& grad, const Tensor& ids) {
  const auto [unique, inverse] = at::_unique(ids.reshape({-1}), /*sorted=*/true, /*return_inverse=*/true);
  Tensor rows = at::embedding_dense_backward(grad, inverse.view(ids.sizes()), unique.size(0),
                                             /*padding_idx=*/-1, /*scale_grad_by_freq=*/false);  // [U, H]
  return {unique, rows};
}

// The tied backward: the touched rows into the head's gradient h when it is here (returns nothing:
// autograd already holds h), else to autograd as a sparse [V, H] gradient.
Tensor tied_embedding_grad(TiedGradSlot& slot, const Tensor& grad, const Tensor& ids, const Tensor& weight) {
  auto [unique, rows] = embedding_rows(grad, ids);
  if (slot.head_grad.defined()) {
    Tensor h = std::exchange(slot.head_grad, Tensor());
    rows.add_(h.index_select(0, unique));  // e + h: IEEE addition commutes exactly
    h.index_copy_(0, unique, rows);
    return Tensor();
  }
  slot.embedding_done = true;
  return at::_sparse_coo_tensor_unsafe(unique.unsqueeze(0), rows, weight.sizes())._coalesced_(true);
}

// The tied table as the head's weight: an alias whose backward leaves the head's gradient in the slot
// for the embedding's backward (and hands it to autograd unchanged).
struct TiedHeadFn : public torch::autograd::Function<TiedHeadFn> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& weight,
                        c10::intrusive_ptr<TiedGradSlot> slot) {
    ctx->saved_data["slot"] = c10::IValue::make_capsule(std::move(slot));
    return weight.view_as(weight);  // [V, H]
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto slot = slot_of(ctx);
    if (!slot->embedding_done && grad_out[0].defined()) slot->head_grad = grad_out[0];
    return {grad_out[0], Tensor()};
  }
};

struct EmbeddingFn : public torch::autograd::Function<EmbeddingFn> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& weight, const Tensor& ids,
                        int64_t mode, c10::intrusive_ptr<TiedGradSlot> slot) {
    // The weight rides in saved_data, not save_for_backward: like LibTorch's own embedding backward,
    // which needs only its row count, no version check ties it to the forward (only its .grad is used).
    ctx->save_for_backward({ids});
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["mode"] = mode;
    if (slot) ctx->saved_data["slot"] = c10::IValue::make_capsule(std::move(slot));
    return at::embedding(weight, ids);  // weight [V, H], ids [B, S] -> [B, S, H]
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const Tensor weight = ctx->saved_data["weight"].toTensor();  // [V, H]
    const Tensor ids = ctx->get_saved_variables()[0];            // [B, S]
    const Tensor& grad = grad_out[0];                            // [B, S, H]
    torch::autograd::variable_list grads(4);                     // weight, ids, mode, slot
    if (!ctx->needs_input_grad(0)) return grads;
    const auto mode = static_cast<EmbeddingGradMode>(ctx->saved_data["mode"].toInt());
    if (mode == EmbeddingGradMode::kTied) {
      grads[0] = tied_embedding_grad(*slot_of(ctx), grad, ids, weight);
      return grads;
    }
    Tensor taken = mode == EmbeddingGradMode::kAccumulate ? take_grad_for_accumulation(weight) : Tensor();
    if (!taken.defined()) {
      grads[0] = at::embedding_backward(grad, ids, weight.size(0), /*padding_idx=*/-1, false, false);
      return grads;
    }
    auto [unique, rows] = embedding_rows(grad, ids);
    rows.add_(taken.index_select(0, unique));  // new + old: IEEE addition commutes exactly
    taken.index_copy_(0, unique, rows);
    grads[0] = std::move(taken);
    return grads;
  }
};
}  // namespace

// Only a backward can use the slot: under no_grad (or a frozen table) nothing pairs.
static bool tied_slot_wanted(const EmbeddingImpl& e) {
  return e.tied_to_head && at::GradMode::is_enabled() && e.weight.requires_grad();
}

Tensor EmbeddingImpl::forward(const Tensor& ids) {
  if (tied_slot_wanted(*this)) {
    return EmbeddingFn::apply(weight, ids, static_cast<int64_t>(EmbeddingGradMode::kTied),
                              pair_tied_slot(pending_tied_, /*head=*/false));
  }
  const EmbeddingGradMode mode = accumulate_into_grad ? EmbeddingGradMode::kAccumulate : EmbeddingGradMode::kDense;
  return EmbeddingFn::apply(weight, ids, static_cast<int64_t>(mode), c10::intrusive_ptr<TiedGradSlot>());
}

Tensor EmbeddingImpl::as_head() const {
  if (!tied_slot_wanted(*this)) return weight;
  return TiedHeadFn::apply(weight, pair_tied_slot(pending_tied_, /*head=*/true));
}

}  // namespace sftgo::model
