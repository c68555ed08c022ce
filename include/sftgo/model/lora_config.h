// LoRA adapter options and the PEFT adapter_config.json reader: no LibTorch, so the adapter loader's
// parsing and checks can be fuzzed on their own (fuzz/fuzz_lora_adapter.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sftgo/io/safetensors.h"

namespace sftgo::model {

struct LoraOptions {
  int64_t rank = 16;
  double alpha = 32;
  double dropout = 0.0;  // on the adapter's input, training mode with grad enabled only
  // Any of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj lm_head (lm_head needs an untied head).
  std::vector<std::string> target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  bool use_rslora = false;  // scaling alpha / sqrt(r) instead of alpha / r
  // "default": PEFT's init_lora_weights=True (A Kaiming-uniform a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)),
  // B zeros, so the adapted model starts equal to the base). "gaussian": A ~ N(0, 1/r), B zeros.
  std::string init = "default";
  std::string base_model_name_or_path;  // written into adapter_config.json only

  double scaling() const;
  // Throws kConfig naming the field when a value is out of range or a target is unknown.
  void validate() const;
};

// The projection names apply_lora accepts, in model order.
const std::vector<std::string>& lora_target_names();
// "q_proj, v_proj" -> {"q_proj", "v_proj"} in model order; "all-linear" -> the seven projections
// (PEFT's shorthand: every linear layer but the output head). Throws kConfig naming
// lora.target_modules on an unknown or repeated name.
std::vector<std::string> parse_lora_target_modules(const std::string& csv);

// Reads `dir`/adapter_config.json of a PEFT LoRA adapter; throws kConfig naming the file and field
// for what this implementation does not support (DoRA, bias, regex targets, rank/alpha patterns, ...).
LoraOptions read_lora_config(const std::string& dir);
// The same from the text of an adapter_config.json; `path` names it in errors.
LoraOptions parse_lora_config(std::string_view text, const std::string& path);

// The adapter's stored tensors against its config before anything is allocated: every
// *.lora_A.weight must be [r, in] and every *.lora_B.weight [out, r] with adapter_config.json's 'r',
// and there must be at least one of them. A hand-edited "r": 2147483647 is then an error naming
// `config_path` and 'r' (kConfig), not an attempt to allocate terabytes.
void check_adapter_tensors(const LoraOptions& o, const std::vector<io::TensorView>& tensors,
                           const std::string& config_path, const std::string& weights_path);

}  // namespace sftgo::model
