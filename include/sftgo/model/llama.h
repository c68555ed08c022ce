// Llama-3 decoder in LibTorch, written to read like the maths (gpt-fast style) and to match Hugging
// Face transformers' LlamaForCausalLM numerically (same op order, same fp32 islands).
//
// RoPE convention (HF "rotate_half", used by every HF Llama checkpoint): a head vector x of size d
// is split in halves x = [x1, x2] (not interleaved pairs); rotation by angles theta_i (i < d/2)
// gives [x1*cos - x2*sin, x2*cos + x1*sin], i.e. x*cos + rotate_half(x)*sin with
// rotate_half(x) = [-x2, x1] and cos/sin duplicated over both halves. Meta's original checkpoints
// use interleaved pairs; HF permutes q_proj/k_proj rows at conversion, so HF weights need no change.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/model/config.h"

namespace sftgo::model {

struct ModelOptions {
  c10::ScalarType dtype = c10::kFloat;  // kFloat or kBFloat16
  c10::Device device = c10::kCPU;
  // Random init (normal(0, initializer_range), norms = 1). Off when weights are loaded right after,
  // so parameters are allocated once on the target device/dtype and never written twice.
  bool init_weights = true;
  uint64_t seed = 0;
  bool activation_checkpointing = false;
  // ZeRO-3: the parameters get their shapes, dtype and device but no memory (and no values: init_weights
  // and loading are skipped); weight_source gives each one's values to the sharded optimizer, one tensor
  // at a time, so no rank ever holds the whole model.
  bool defer_storage = false;
};

namespace detail {
// A parameter tensor of `sizes`: allocated (ones when `ones`, else uninitialised), or with no storage
// while a model is built with ModelOptions::defer_storage.
torch::Tensor new_parameter(at::IntArrayRef sizes, const torch::TensorOptions& options, bool ones = false);
}  // namespace detail

// ---- RoPE --------------------------------------------------------------------------------------

// Inverse frequencies [head_dim/2] (fp32, CPU), with llama3 scaling when the config has it.
torch::Tensor rope_inv_freq(const LlamaConfig& config);
// cos/sin [B,S,head_dim] in `dtype`, computed in fp32 from position_ids [B,S] as HF does.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                                                     c10::ScalarType dtype);
// x [B,heads,S,head_dim]; cos/sin [B,S,head_dim].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// ---- Packing helpers ---------------------------------------------------------------------------

// doc_ids [B,S] (any integer ids, equal within a document) -> bool [B,1,S,S], true where query i may
// attend key j: same document and j <= i. Padding can use its own id (it then attends to itself).
torch::Tensor document_causal_mask(const torch::Tensor& doc_ids);
// doc_ids [B,S] -> position ids [B,S] (int64) restarting at 0 at each document boundary.
torch::Tensor document_position_ids(const torch::Tensor& doc_ids);

// ---- KV cache (generation) ---------------------------------------------------------------------

struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer [B, kv_heads, capacity, head_dim]
  int64_t length = 0;               // positions filled so far
  int64_t capacity = 0;
  static KVCache create(const LlamaConfig& config, int64_t batch, int64_t capacity,
                        const torch::TensorOptions& options);
};

// ---- Layers ------------------------------------------------------------------------------------

// y = w * (x / sqrt(mean(x^2) + eps)); normalised in fp32, scaled in the input dtype (as HF).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // x [..., dim]
  torch::Tensor weight;                           // [dim]
  double eps;
};
TORCH_MODULE(RMSNorm);

// Bias-free linear layer allocated directly with the given options (no CPU fp32 staging).
// Optionally carries a LoRA adapter (model/lora.h): then y = W x + lora_scaling * B (A dropout(x)).
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in, int64_t out, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x) {  // x [..., in]
    if (!lora_A.defined() || lora_disabled) return at::linear(x, weight);
    return forward_lora(x);
  }
  torch::Tensor weight;  // [out, in]
  // LoRA adapter, undefined unless apply_lora added one (registered parameters "lora_A"/"lora_B").
  torch::Tensor lora_A;  // [r, in] fp32
  torch::Tensor lora_B;  // [out, r] fp32
  double lora_scaling = 0.0;
  double lora_dropout = 0.0;
  bool lora_disabled = false;  // true: the base layer only (the Rho-1 reference pass)
  // Drops the adapter (unregisters lora_A/lora_B): merge_lora calls it after folding.
  void remove_lora();

 private:
  torch::Tensor forward_lora(const torch::Tensor& x);
};
TORCH_MODULE(Linear);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& ids);  // ids [B,S] int64 -> [B,S,dim], at::embedding's values
  torch::Tensor weight;                             // [vocab, dim]
  // The table is used by nothing else in the graph (not tied to the LM head): backward then adds the
  // rows a batch touched into an accumulated weight.grad in place instead of handing AccumulateGrad a
  // dense [vocab, dim] gradient (bit for bit the same sums). Set by LlamaModel.
  bool accumulate_into_grad = false;
  // The table is the LM head too (tied), and the head takes it through as_head(): backward adds the
  // rows a batch touched into the head's dense gradient in place (bit for bit the dense sum), so the
  // tied weight's backward holds one dense [vocab, dim] gradient instead of two. A backward without
  // the head leaves a sparse .grad. Set by LlamaModel; takes precedence over accumulate_into_grad.
  bool tied_to_head = false;
  // `weight` [vocab, dim] for use as the LM head's weight: with tied_to_head under grad mode, an alias
  // paired with this micro-batch's forward (before or after it), whose gradient the forward's backward
  // completes in place; otherwise `weight` itself.
  torch::Tensor as_head() const;

 private:
  mutable c10::intrusive_ptr<torch::CustomClassHolder> pending_tied_;  // the half of a tied pair formed first
};
TORCH_MODULE(Embedding);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const LlamaConfig& config, const torch::TensorOptions& options);
  // x [B,S,H]; cos/sin [B,S,hd]; mask: bool [B,1,S,S_kv] or undefined (plain causal).
  // With `cache`, k/v are written at positions [cache->length, +S) of layer `layer` and attention
  // runs over the whole filled prefix.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache = nullptr, int64_t layer = 0);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
};
TORCH_MODULE(Attention);

// SwiGLU: down(silu(gate(x)) * up(x)).
class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const LlamaConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // x [B,S,H]
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

// Pre-norm residual block: h = x + attn(norm(x)); out = h + mlp(norm(h)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const LlamaConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache = nullptr, int64_t layer = 0);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(Block);

// The decoder. Parameter names are HF's without the "model." prefix (lm_head excepted), so
// hf_named_parameters() is a pure rename and load and save share it.
struct LoraOptions;  // model/lora.h

// Lets a runtime that shards the weights over ranks (ZeRO-3, dist/zero3.h) keep a decoder block's
// weights in memory only around its use. Blocks are 0..L-1; kOuterWeights is everything outside them
// (embedding, final norm, LM head), acquired by the forward and the head and kept until the runtime
// releases it after the step's backward. Every rank makes the same calls in the same order.
class WeightResidency {
 public:
  static constexpr int64_t kOuterWeights = -1;
  static constexpr int64_t kNone = -2;
  virtual ~WeightResidency() = default;
  // `block` runs next; `next` (kNone: none) is likely to run after it and may be fetched meanwhile.
  virtual void acquire(int64_t block, int64_t next) = 0;
  virtual void release(int64_t block) = 0;
};

class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const LlamaConfig& config, const ModelOptions& options = {});

  // ids [B,S] int64; position_ids [B,S] int64 or undefined (0..S-1); attn_mask bool [B,1,S,S]
  // (true = may attend; must already be causal, see document_causal_mask) or undefined (causal).
  // Returns the final-normed hidden states [B,S,H].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& position_ids = {},
                        const torch::Tensor& attn_mask = {});
  // hidden [B,S,H] -> logits [B,S,V] in the model dtype (tied: embed_tokens.weight is the head).
  torch::Tensor logits(const torch::Tensor& hidden);
  // The LM head weight [V,H] as a loss that takes a head weight (not the module) must see it:
  // embed_tokens.weight when tied, lm_head.weight, or W + s * B A when lm_head has a LoRA adapter
  // (model/lora.h: formed in fp32, cast to W's dtype, differentiable in A and B; defined in lora.cpp).
  torch::Tensor head_weight() const;
  // Incremental decoding: ids [B,T] at positions cache.length.., appends to `cache`, returns the
  // final-normed hidden states [B,T,H].
  torch::Tensor forward_cached(const torch::Tensor& ids, KVCache& cache);

  // ZeRO-3: blocks' weights are acquired around each forward and each checkpointed recomputation
  // (which a block then always takes under grad: its weights are freed between forward and backward).
  void set_weight_residency(std::shared_ptr<WeightResidency> residency) { residency_ = std::move(residency); }
  WeightResidency* weight_residency() const { return residency_.get(); }
  void set_activation_checkpointing(bool on) { checkpointing_ = on; }
  bool activation_checkpointing() const { return checkpointing_; }
  const LlamaConfig& config() const { return config_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const;

  // (HF name, parameter) for every parameter: model.embed_tokens.weight, model.layers.N...,
  // model.norm.weight, lm_head.weight (absent when tied).
  std::vector<std::pair<std::string, torch::Tensor>> hf_named_parameters() const;

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  Linear lm_head{nullptr};                  // null when tied
  std::shared_ptr<const LoraOptions> lora;  // set by apply_lora (model/lora.h); null without adapters

 private:
  LlamaConfig config_;
  c10::ScalarType dtype_;
  bool checkpointing_ = false;
  torch::Tensor inv_freq_;  // [hd/2] fp32 on the model device
  std::vector<BlockImpl*> blocks_;
  std::shared_ptr<WeightResidency> residency_;  // null unless the weights are sharded (ZeRO-3)
};
TORCH_MODULE(LlamaModel);

// ---- Weights (HF layout) -----------------------------------------------------------------------

// Builds the model from a HF directory (config.json + model.safetensors[.index.json]). Parameters
// are allocated once on options.device/dtype and filled straight from the mmap'ed files.
LlamaModel load_pretrained(const std::string& dir, ModelOptions options = {});

// The initial values of a model built with ModelOptions::defer_storage: hf_name -> [its shape] in the
// model dtype on the CPU, from the HF directory `dir`, or (dir empty) the random initialisation the
// model would have drawn itself (the same generator and order: ask in hf_named_parameters order). Each
// call reads or draws one tensor; the same errors as load_hf_weights name the file and tensor.
using WeightSource = std::function<torch::Tensor(const std::string& hf_name)>;
WeightSource weight_source(const LlamaModelImpl& model, const ModelOptions& options, const std::string& dir);

// Fills every parameter of `model` from a checkpoint (F32/F16/BF16 converted to the model dtype).
// Parameters without storage (ZeRO-3 shards them: their values come back from the optimizer's shards)
// are skipped.
// Errors (kModel) name the tensor: a missing parameter, an unexpected tensor, a shape mismatch.
void load_hf_weights(LlamaModelImpl& model, const std::string& checkpoint_path);

struct SaveOptions {
  uint64_t max_shard_bytes = 5'000'000'000;
  std::optional<c10::ScalarType> dtype;  // default: the model dtype
  // More files of the directory (name -> content, e.g. the tokenizer's), written in the same atomic swap.
  std::map<std::string, std::string> extra_files;
  // Called with a tensor's HF name just before it is read, in file order (ZeRO-3 gathers its layer then).
  std::function<void(const std::string&)> before_read;
};
// Writes config.json + safetensors (sharded above max_shard_bytes, with index json) to `dir`,
// atomically (io::write_sharded_safetensors); transformers.AutoModelForCausalLM loads it.
void save_pretrained(const LlamaModelImpl& model, const std::string& dir, const SaveOptions& options = {});

}  // namespace sftgo::model
