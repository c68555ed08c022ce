// LoRA adapters on the decoder's linear layers, PEFT-compatible in and out.
//
// A targeted Linear computes y = W x + s * B (A dropout(x)) with A [r, in], B [out, r] and
// s = alpha / r (rsLoRA: alpha / sqrt(r)), in PEFT's op order. Adapters are float32 whatever the
// model dtype (the input is cast to fp32 for the adapter path and the sum cast back to the base
// output's dtype, as PEFT does for fp32 adapters on a bf16 model); base weights are frozen.
//
// Names: the adapter tensors are registered parameters of the Linear ("...q_proj.lora_A"), so
// model->parameters() (and activation checkpointing, which passes a block's parameters explicitly)
// sees them; hf_named_parameters() leaves them out, so save_pretrained writes base weights only.
// lora_named_parameters() gives PEFT's names: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/model/lora_config.h"  // LoraOptions, read_lora_config (no LibTorch)

namespace sftgo::model {

class LlamaModelImpl;


// Adds an adapter to every targeted Linear (A initialised from `seed`, B zeros), freezes every
// other parameter (requires_grad false) and returns the adapter parameters in model order.
// Throws kModel if the model already has adapters, kConfig on bad options.
std::vector<torch::Tensor> apply_lora(LlamaModelImpl& model, const LoraOptions& options, uint64_t seed);

// True when apply_lora (or load_lora_adapter) gave the model adapters.
bool has_lora(const LlamaModelImpl& model);
// The options the adapters were created with (throws kModel if none).
const LoraOptions& lora_options(const LlamaModelImpl& model);

// (PEFT key, tensor) for every adapter tensor, model order:
// base_model.model.model.layers.N.{self_attn,mlp}.X_proj.lora_{A,B}.weight, base_model.model.lm_head.lora_{A,B}.weight.
// A is [r, in], B is [out, r]. The tensors are the parameters themselves (not copies).
std::vector<std::pair<std::string, torch::Tensor>> lora_named_parameters(const LlamaModelImpl& model);

// The parameters an optimizer updates: the adapters (PEFT names, as lora_named_parameters) when the
// model has any, else every parameter (HF names, as hf_named_parameters).
std::vector<std::pair<std::string, torch::Tensor>> trained_named_parameters(const LlamaModelImpl& model);

// Turns every adapter off (true) or back on: the reference pass of Rho-1 on the frozen base model.
void set_lora_disabled(LlamaModelImpl& model, bool disabled);

// Writes `dir`/adapter_config.json (PEFT's LoraConfig fields) + `dir`/adapter_model.safetensors
// (PEFT names, fp32) atomically: `dir` is replaced as a whole (io::write_sharded_safetensors), so
// give the adapter a directory of its own. peft.PeftModel.from_pretrained loads it unchanged.
void save_lora_adapter(const LlamaModelImpl& model, const std::string& dir);


// Reads a PEFT LoRA adapter (ours or trained elsewhere): applies adapters as its config says and
// fills them from adapter_model.safetensors (or adapter_model.bin is refused: convert it). Errors
// (kModel/kConfig) name the file and the tensor: unexpected, missing, or of the wrong shape.
void load_lora_adapter(LlamaModelImpl& model, const std::string& dir);

// The LM head's weight [V, H] as the loss should see it: model.head_weight(). The base head (lm_head, or
// embed_tokens when tied) when it has no adapter, else W + s * B A formed in fp32 and cast to W's dtype,
// differentiable with respect to A and B. The fused loss takes a head weight instead of calling lm_head,
// so a trainer must pass this (with lm_head among the targets it costs one [V, H] temporary per step; no
// dropout on this path: lm_head with lora.dropout > 0 in training is refused here with kConfig).
torch::Tensor lora_head_weight(const LlamaModelImpl& model);

// Folds every adapter into its base weight, W += s * B A (computed in fp32, rounded once to the
// weight dtype), and turns the adapters off, so forward and save_pretrained give the merged model.
void merge_lora(LlamaModelImpl& model);

}  // namespace sftgo::model
