// Llama-3 layers, the decoder, and per-block activation checkpointing.
#include "sftgo/model/llama.h"

#include <torch/torch.h>

#include <cmath>
#include <utility>

#include "sftgo/core/error.h"
#include "sftgo/model/autocast.h"

namespace sftgo::model {

using torch::Tensor;
namespace F = torch::nn::functional;

// ---- RoPE --------------------------------------------------------------------------------------

Tensor rope_inv_freq(const LlamaConfig& c) {
  // fp32 throughout, in HF's op order, so inv_freq matches transformers bit for bit.
  const int64_t dim = c.head_dim;
  Tensor exponent = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(dim);
  Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponent);
  if (!c.rope_scaling) return inv_freq;
  const RopeScaling& s = *c.rope_scaling;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  // Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, the band between
  // interpolated smoothly: this is what lets 8k-trained RoPE extrapolate to 128k.
  Tensor wavelen = 2 * M_PI / inv_freq;
  Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  Tensor smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(medium, smoothed, scaled);
}

std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& inv_freq, const Tensor& position_ids, c10::ScalarType dtype) {
  // angles [B,S,hd/2] = pos * inv_freq, duplicated over both halves (rotate_half convention).
  Tensor freqs = position_ids.unsqueeze(-1).to(torch::kFloat) * inv_freq.to(torch::kFloat);
  Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

static Tensor rotate_half(const Tensor& x) {  // x [..., d] -> [-x2, x1]
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);  // [B,1,S,hd]: broadcast over heads
  return x * c + rotate_half(x) * s;
}

// ---- Packing helpers ---------------------------------------------------------------------------

Tensor document_causal_mask(const Tensor& doc_ids) {
  SFTGO_CHECK(doc_ids.dim() == 2, ErrorKind::kModel, "document ids must be [B,S], got ", doc_ids.sizes());
  const int64_t s = doc_ids.size(1);
  Tensor same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1);                         // [B,S,S]
  Tensor causal = torch::ones({s, s}, doc_ids.options().dtype(torch::kBool)).tril();  // [S,S]
  return same.logical_and(causal).unsqueeze(1);                                       // [B,1,S,S]
}

Tensor document_position_ids(const Tensor& doc_ids) {
  SFTGO_CHECK(doc_ids.dim() == 2, ErrorKind::kModel, "document ids must be [B,S], got ", doc_ids.sizes());
  const int64_t s = doc_ids.size(1);
  Tensor idx = torch::arange(s, doc_ids.options().dtype(torch::kInt64)).expand_as(doc_ids);
  // A document starts where the id changes; its position is the distance to that start.
  Tensor start = torch::ones_like(doc_ids, torch::kBool);
  if (s > 1) start.slice(1, 1).copy_(doc_ids.slice(1, 1) != doc_ids.slice(1, 0, s - 1));
  Tensor start_idx = torch::where(start, idx, torch::zeros_like(idx));
  return idx - std::get<0>(start_idx.cummax(1));
}

// ---- KV cache ----------------------------------------------------------------------------------

KVCache KVCache::create(const LlamaConfig& c, int64_t batch, int64_t capacity, const torch::TensorOptions& options) {
  KVCache kv;
  kv.capacity = capacity;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    kv.k.push_back(torch::zeros({batch, c.num_key_value_heads, capacity, c.head_dim}, options));
    kv.v.push_back(torch::zeros({batch, c.num_key_value_heads, capacity, c.head_dim}, options));
  }
  return kv;
}

// ---- Layers ------------------------------------------------------------------------------------

namespace {
thread_local bool tl_defer_storage = false;  // set while LlamaModelImpl builds with defer_storage
}  // namespace

Tensor detail::new_parameter(at::IntArrayRef sizes, const torch::TensorOptions& options, bool ones) {
  if (!tl_defer_storage) return ones ? torch::ones(sizes, options) : torch::empty(sizes, options);
  Tensor t = torch::empty({0}, options);  // no memory: the shape only (dist::ShardedParams fills it)
  t.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return t;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", detail::new_parameter({dim}, options, /*ones=*/true));
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  // fp32 statistics even for bf16 activations (bf16 sums of squares lose ~3 digits), then back to
  // the input dtype before the weight, exactly as HF does.
  Tensor xf = x.to(torch::kFloat);
  Tensor normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

LinearImpl::LinearImpl(int64_t in, int64_t out, const torch::TensorOptions& options) {
  weight = register_parameter("weight", detail::new_parameter({out, in}, options));
}

void LinearImpl::remove_lora() {
  if (!lora_A.defined()) return;
  parameters_.erase("lora_A");
  parameters_.erase("lora_B");
  lora_A = lora_B = Tensor();
  lora_scaling = lora_dropout = 0.0;
  lora_disabled = false;
}

namespace {
// True while CheckpointedBlock runs a block's no-grad forward for training: LoRA dropout must act
// there as it will in the recomputation (which restores the RNG state the forward started from).
thread_local bool tl_checkpoint_forward = false;
}  // namespace

Tensor LinearImpl::forward_lora(const Tensor& x) {
  // PEFT's LoRA Linear: result = base(x); result + lora_B(lora_A(dropout(x.to(A.dtype)))) * scaling,
  // cast back to the base result's dtype. Dropout only while training with grad on (score/generate
  // run under no_grad and so never drop).
  Tensor y = at::linear(x, weight);  // [..., out]
  Tensor xa = x.to(lora_A.scalar_type());
  if (lora_dropout > 0 && is_training() && (torch::GradMode::is_enabled() || tl_checkpoint_forward))
    xa = at::dropout(xa, lora_dropout, true);
  Tensor delta = at::linear(at::linear(xa, lora_A), lora_B) * lora_scaling;  // [..., out] fp32
  return (y + delta).to(y.scalar_type());
}

AttentionImpl::AttentionImpl(const LlamaConfig& c, const torch::TensorOptions& o)
    : n_heads(c.num_attention_heads), n_kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, n_heads * head_dim, o));
  k_proj = register_module("k_proj", Linear(c.hidden_size, n_kv_heads * head_dim, o));
  v_proj = register_module("v_proj", Linear(c.hidden_size, n_kv_heads * head_dim, o));
  o_proj = register_module("o_proj", Linear(n_heads * head_dim, c.hidden_size, o));
}

Tensor AttentionImpl::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& mask, KVCache* cache,
                              int64_t layer) {
  const int64_t b = x.size(0), s = x.size(1);
  Tensor q = q_proj(x).view({b, s, n_heads, head_dim}).transpose(1, 2);     // [B,nh,S,hd]
  Tensor k = k_proj(x).view({b, s, n_kv_heads, head_dim}).transpose(1, 2);  // [B,nkv,S,hd]
  Tensor v = v_proj(x).view({b, s, n_kv_heads, head_dim}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  std::optional<Tensor> attn_mask;
  bool causal = true;
  if (mask.defined()) {
    attn_mask = mask;
    causal = false;
  }
  if (cache != nullptr) {
    const int64_t start = cache->length, end = start + s;
    SFTGO_CHECK(end <= cache->capacity, ErrorKind::kModel, "KV cache overflow: ", end, " > ", cache->capacity);
    cache->k[layer].slice(2, start, end).copy_(k);
    cache->v[layer].slice(2, start, end).copy_(v);
    k = cache->k[layer].slice(2, 0, end);
    v = cache->v[layer].slice(2, 0, end);
    if (!mask.defined() && start > 0) {
      // Query i sits at absolute position start+i: it sees keys 0..start+i. (A single new token
      // sees everything; SDPA's is_causal would align the triangle to the top-left instead.)
      causal = false;
      if (s > 1) attn_mask = torch::ones({s, end}, x.options().dtype(torch::kBool)).tril(start);
    }
  }
  // GQA: SDPA broadcasts the kv heads over the query groups itself (no repeat_kv copy).
  Tensor y = at::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, causal, std::nullopt,
                                              /*enable_gqa=*/n_heads != n_kv_heads);  // [B,nh,S,hd]
  return o_proj(y.transpose(1, 2).reshape({b, s, n_heads * head_dim}));
}

MLPImpl::MLPImpl(const LlamaConfig& c, const torch::TensorOptions& o) {
  gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, o));
  up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, o));
  down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, o));
}

Tensor MLPImpl::forward(const Tensor& x) { return down_proj(F::silu(gate_proj(x)) * up_proj(x)); }

BlockImpl::BlockImpl(const LlamaConfig& c, const torch::TensorOptions& o) {
  self_attn = register_module("self_attn", Attention(c, o));
  mlp = register_module("mlp", MLP(c, o));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, o));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, o));
}

Tensor BlockImpl::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& mask, KVCache* cache,
                          int64_t layer) {
  Tensor h = x + self_attn(input_layernorm(x), cos, sin, mask, cache, layer);
  return h + mlp(post_attention_layernorm(h));
}

// ---- Activation checkpointing ------------------------------------------------------------------

namespace {

// Does the block draw random numbers in a training forward (LoRA dropout)? Then the checkpoint
// recomputation must replay the forward's RNG state to drop the same units.
bool block_uses_rng(BlockImpl& b) {
  for (LinearImpl* l :
       {b.self_attn->q_proj.get(), b.self_attn->k_proj.get(), b.self_attn->v_proj.get(), b.self_attn->o_proj.get(),
        b.mlp->gate_proj.get(), b.mlp->up_proj.get(), b.mlp->down_proj.get()})
    if (l->lora_A.defined() && !l->lora_disabled && l->lora_dropout > 0 && l->is_training()) return true;
  return false;
}

// Runs a block without keeping its activations; backward re-runs the block forward with grad on
// and differentiates that (LibTorch has no torch.utils.checkpoint). The block's parameters are
// explicit inputs so their gradients flow through the engine like any other (hooks, accumulation).
// Llama itself has no dropout; LoRA dropout does draw random numbers, so a block that uses it saves
// the generator state in forward and replays it in backward (block_uses_rng), and the recomputation
// drops the same units.
struct CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& cos, const Tensor& sin,
                        const std::optional<Tensor>& mask, at::TensorList params, BlockImpl* block,
                        WeightResidency* residency, int64_t index) {
    ctx->save_for_backward({x});
    ctx->saved_data["cos"] = cos;
    ctx->saved_data["sin"] = sin;
    ctx->saved_data["mask"] = mask.has_value() ? *mask : Tensor();
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["residency"] = reinterpret_cast<int64_t>(residency);
    ctx->saved_data["index"] = index;
    ctx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    // The recomputation must cast exactly as this forward did (train.precision: bf16_autocast).
    const AutocastState ac = AutocastState::current();
    ctx->saved_data["ac_cpu"] = ac.cpu;
    ctx->saved_data["ac_cuda"] = ac.cuda;
    ctx->saved_data["ac_cpu_dtype"] = static_cast<int64_t>(ac.cpu_dtype);
    ctx->saved_data["ac_cuda_dtype"] = static_cast<int64_t>(ac.cuda_dtype);
    const bool rng = block_uses_rng(*block);
    if (rng) ctx->saved_data["rng"] = at::globalContext().defaultGenerator(x.device()).get_state();
    torch::NoGradGuard no_grad;
    struct Flag {  // reset even if the forward throws
      Flag() { tl_checkpoint_forward = true; }
      ~Flag() { tl_checkpoint_forward = false; }
    } flag;
    return block->forward(x, cos, sin, mask.has_value() ? *mask : Tensor());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* block = reinterpret_cast<BlockImpl*>(ctx->saved_data["block"].toInt());
    Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    const auto& saved_mask = ctx->saved_data["mask"];
    Tensor mask = saved_mask.isTensor() ? saved_mask.toTensor() : Tensor();
    std::vector<Tensor> params = block->parameters();
    // ZeRO-3: the block's weights were freed after its forward; gather them again (and start on the
    // block before it, which backward reaches next) for the recomputation and its gradients.
    auto* residency = reinterpret_cast<WeightResidency*>(ctx->saved_data["residency"].toInt());
    const int64_t index = ctx->saved_data["index"].toInt();
    if (residency != nullptr) residency->acquire(index, index > 0 ? index - 1 : WeightResidency::kNone);
    Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      // The forward's autocast state, whatever region backward() was called in. Cast cache off: casts
      // cached under the forward's no_grad carry no graph and would cut the weights' gradients.
      AutocastGuard cpu_ac(c10::DeviceType::CPU, static_cast<c10::ScalarType>(ctx->saved_data["ac_cpu_dtype"].toInt()),
                           ctx->saved_data["ac_cpu"].toBool(), /*cache=*/false);
      AutocastGuard cuda_ac(c10::DeviceType::CUDA,
                            static_cast<c10::ScalarType>(ctx->saved_data["ac_cuda_dtype"].toInt()),
                            ctx->saved_data["ac_cuda"].toBool(), /*cache=*/false);
      // LoRA dropout: replay the forward's RNG state, then put the generator back where it was.
      const bool rng = ctx->saved_data.count("rng") > 0;
      at::Generator gen = at::globalContext().defaultGenerator(x.device());
      Tensor resume_state = rng ? gen.get_state() : Tensor();
      if (rng) gen.set_state(ctx->saved_data["rng"].toTensor());
      out = block->forward(x, ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(), mask);
      if (rng) gen.set_state(resume_state);
    }
    std::vector<Tensor> inputs = {x};
    std::vector<size_t> which;  // params that need grads (frozen ones get none)
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].requires_grad()) {
        inputs.push_back(params[i]);
        which.push_back(i);
      }
    auto grads = torch::autograd::grad({out}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    out = Tensor();
    // The gradients are computed; accumulating them (after this returns) needs only the shapes.
    if (residency != nullptr) residency->release(index);
    // One slot per forward argument that is a tensor: x, cos, sin, mask, params..., (block, residency,
    // index: none).
    torch::autograd::variable_list result(4 + params.size() + 3);
    result[0] = grads[0];
    for (size_t j = 0; j < which.size(); ++j) result[4 + which[j]] = grads[1 + j];
    return result;
  }
};

}  // namespace

// ---- Decoder -----------------------------------------------------------------------------------

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config, const ModelOptions& options)
    : config_(config), dtype_(options.dtype), checkpointing_(options.activation_checkpointing) {
  config_.validate();
  SFTGO_CHECK(dtype_ == torch::kFloat || dtype_ == torch::kBFloat16, ErrorKind::kModel,
              "model dtype must be float32 or bfloat16, got ", c10::toString(dtype_));
  const auto o = torch::TensorOptions().dtype(dtype_).device(options.device);
  struct Defer {  // reset even if a constructor throws
    explicit Defer(bool on) { tl_defer_storage = on; }
    ~Defer() { tl_defer_storage = false; }
  } defer(options.defer_storage);
  embed_tokens = register_module("embed_tokens", Embedding(config.vocab_size, config.hidden_size, o));
  embed_tokens->accumulate_into_grad = !config.tie_word_embeddings;  // tied: the head's gradient joins it
  embed_tokens->tied_to_head = config.tie_word_embeddings;            // ... and takes its rows in place
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    Block block(config, o);
    layers->push_back(block);
    blocks_.push_back(block.get());
  }
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, o));
  if (!config.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(config.hidden_size, config.vocab_size, o));
  inv_freq_ = rope_inv_freq(config).to(options.device);
  if (options.init_weights && !options.defer_storage) {  // deferred: weight_source draws the same values
    // HF's _init_weights: normal(0, initializer_range) for matrices, ones for norms.
    torch::NoGradGuard no_grad;
    auto gen = at::detail::createCPUGenerator(options.seed);
    for (auto& p : named_parameters()) {
      if (p.key().ends_with("norm.weight")) {
        p.value().fill_(1.0);
      } else {
        p.value().copy_(at::normal(0.0, config.initializer_range, p.value().sizes(), gen,
                                   torch::TensorOptions().dtype(torch::kFloat)));
      }
    }
  }
}

c10::Device LlamaModelImpl::device() const { return embed_tokens->weight.device(); }

Tensor LlamaModelImpl::forward(const Tensor& ids, const Tensor& position_ids, const Tensor& attn_mask) {
  SFTGO_CHECK(ids.dim() == 2, ErrorKind::kModel, "ids must be [B,S], got ", ids.sizes());
  const int64_t b = ids.size(0), s = ids.size(1);
  Tensor pos = position_ids.defined()
                   ? position_ids
                   : torch::arange(s, ids.options().dtype(torch::kInt64)).unsqueeze(0).expand({b, s});
  SFTGO_CHECK(pos.sizes() == ids.sizes(), ErrorKind::kModel, "position_ids ", pos.sizes(), " must match ids ",
              ids.sizes());
  if (attn_mask.defined())
    SFTGO_CHECK(attn_mask.dim() == 4 && attn_mask.size(0) == b && attn_mask.size(2) == s && attn_mask.size(3) == s,
                ErrorKind::kModel, "attn_mask must be [B,1,S,S] = [", b, ",1,", s, ",", s, "], got ",
                attn_mask.sizes());
  auto [cos, sin] = rope_cos_sin(inv_freq_, pos, dtype_);  // [B,S,hd]
  if (residency_) residency_->acquire(WeightResidency::kOuterWeights, WeightResidency::kNone);
  Tensor h = embed_tokens(ids);  // [B,S,H]
  // Sharded weights are freed after each block's forward, so under grad the block must recompute.
  const bool ckpt = (checkpointing_ || residency_) && torch::GradMode::is_enabled();
  const auto n = static_cast<int64_t>(blocks_.size());
  for (int64_t i = 0; i < n; ++i) {
    BlockImpl* block = blocks_[static_cast<size_t>(i)];
    if (residency_) residency_->acquire(i, i + 1 < n ? i + 1 : WeightResidency::kNone);
    if (ckpt) {
      std::vector<Tensor> params = block->parameters();
      h = CheckpointedBlock::apply(h, cos, sin, attn_mask.defined() ? std::optional<Tensor>(attn_mask) : std::nullopt,
                                   at::TensorList(params), block, residency_.get(), i);
    } else {
      h = block->forward(h, cos, sin, attn_mask);
    }
    if (residency_) residency_->release(i);
  }
  return norm(h);
}

Tensor LlamaModelImpl::logits(const Tensor& hidden) {
  if (residency_) residency_->acquire(WeightResidency::kOuterWeights, WeightResidency::kNone);
  return config_.tie_word_embeddings ? at::linear(hidden, embed_tokens->as_head()) : lm_head(hidden);
}

Tensor LlamaModelImpl::forward_cached(const Tensor& ids, KVCache& cache) {
  const int64_t b = ids.size(0), t = ids.size(1);
  Tensor pos =
      torch::arange(cache.length, cache.length + t, ids.options().dtype(torch::kInt64)).unsqueeze(0).expand({b, t});
  auto [cos, sin] = rope_cos_sin(inv_freq_, pos, dtype_);
  if (residency_) residency_->acquire(WeightResidency::kOuterWeights, WeightResidency::kNone);
  Tensor h = embed_tokens(ids);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const auto b = static_cast<int64_t>(i);
    if (residency_) residency_->acquire(b, WeightResidency::kNone);
    h = blocks_[i]->forward(h, cos, sin, Tensor(), &cache, b);
    if (residency_) residency_->release(b);
  }
  cache.length += t;
  return norm(h);
}

std::vector<std::pair<std::string, Tensor>> LlamaModelImpl::hf_named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& p : named_parameters()) {
    // LoRA adapters are not HF weights (lora_named_parameters gives them PEFT's names).
    if (p.key().ends_with(".lora_A") || p.key().ends_with(".lora_B")) continue;
    // Our tree mirrors HF's LlamaModel; only the head lives outside the "model." prefix.
    if (p.key().starts_with("lm_head."))
      out.emplace_back(p.key(), p.value());
    else
      out.emplace_back("model." + p.key(), p.value());
  }
  return out;
}

}  // namespace sftgo::model
