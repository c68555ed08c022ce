// Llama-3 architecture hyper-parameters, read from / written to a Hugging Face config.json.
// No LibTorch here, so the app and the trainer config can use it cheaply.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sftgo::model {

// Llama 3.1 "llama3" RoPE frequency scaling (HF rope_type "llama3").
struct RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  int64_t vocab_size = 128256;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 14336;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 128;  // hidden_size / num_attention_heads unless config.json says otherwise
  double rms_norm_eps = 1e-5;
  double rope_theta = 500000.0;
  std::optional<RopeScaling> rope_scaling;  // nullopt: plain RoPE
  int64_t max_position_embeddings = 131072;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json allows an int or a list
  std::optional<int64_t> pad_token_id;

  // Parses HF config.json text: accepts the transformers 4.x keys (rope_theta, rope_scaling) and the
  // 5.x "rope_parameters" form. Throws sftgo::Error(kConfig) naming `source` for missing/bad fields
  // and for features we do not implement (attention/mlp bias, other rope types, hidden_act != silu).
  static LlamaConfig from_json(const std::string& text, const std::string& source = "config.json");
  static LlamaConfig from_file(const std::string& path);  // a config.json or a model directory
  // "llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b" (published shapes) or "tiny" (demo).
  static LlamaConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();

  // HF config.json text (transformers 4.x key names, which 5.x also reads), LlamaForCausalLM.
  // `dtype` is written as torch_dtype/dtype ("float32" or "bfloat16").
  std::string to_json(const std::string& dtype = "float32") const;

  // Throws sftgo::Error(kConfig) when the shapes are inconsistent (heads not divisible, ...).
  void validate(const std::string& source = "config") const;
  int64_t num_parameters() const;
};

// The shape a training config asks for when it also names a checkpoint (model.path): an explicit
// model.preset ("" = none given; "auto" = whatever the checkpoint has, no check at all) and the
// model.* shape overrides (-1 = not given).
struct ShapeRequest {
  std::string preset;
  int64_t hidden_size = -1;
  int64_t intermediate_size = -1;
  int64_t num_layers = -1;
  int64_t num_heads = -1;
  int64_t num_kv_heads = -1;
  int64_t vocab_size = -1;
};

// Throws sftgo::Error(kConfig) when `checkpoint` (read from `source`) differs from what `want` asks
// for, naming every differing field with both values and the preset the checkpoint matches, if any.
void check_checkpoint_shape(const LlamaConfig& checkpoint, const std::string& source, const ShapeRequest& want);

}  // namespace sftgo::model
