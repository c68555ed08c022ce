// LlamaConfig <-> HF config.json; presets with the published Llama 3.x shapes.
#include "sftgo/model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sftgo/core/error.h"

namespace sftgo::model {
namespace {

using nlohmann::json;

template <typename T>
T get_or(const json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, source, ": field '", key, "' has the wrong type: ", e.what());
  }
}

int64_t require_int(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  SFTGO_CHECK(it != j.end() && it->is_number_integer(), ErrorKind::kConfig, source, ": missing integer field '", key,
              "'");
  return it->get<int64_t>();
}

// Absent or null: nullopt. Present with another type: an error (a quoted "8" must not silently
// fall back to a default).
std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  SFTGO_CHECK(it->is_number_integer(), ErrorKind::kConfig, source, ": field '", key, "' must be an integer, got ",
              it->dump());
  return it->get<int64_t>();
}

// Bounds on what the model code can honour (each with its reason).
// Token ids are int32 everywhere in the data path (sftgo::TokenId).
constexpr int64_t kMaxVocab = 2147483647;
// A [dim x dim] weight of 2^20 x 2^20 is already 4 TiB in fp32; the bound keeps every size product
// (parameter counts, KV-cache sizes) far from int64 overflow.
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 4096;
// RoPE angles are position x inv_freq in fp32 (as in transformers), and fp32 holds every integer
// position exactly only up to 2^24.
constexpr int64_t kMaxPositions = int64_t{1} << 24;

void check_count(int64_t v, int64_t hi, const char* key, const std::string& source, const char* why) {
  SFTGO_CHECK(v >= 1 && v <= hi, ErrorKind::kConfig, source, ": ", key, " = ", v, " is out of range (expected 1..", hi,
              why[0] ? "; " : "", why, ")");
}

void check_positive(double v, const char* key, const std::string& source, const char* why) {
  SFTGO_CHECK(std::isfinite(v) && v > 0, ErrorKind::kConfig, source, ": ", key, " = ", v,
              " is out of range (expected a finite number > 0; ", why, ")");
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, source, ": not valid JSON: ", e.what());
  }
  SFTGO_CHECK(j.is_object(), ErrorKind::kConfig, source, ": not a JSON object");
  std::string model_type = get_or<std::string>(j, "model_type", "llama", source);
  SFTGO_CHECK_HINT(model_type == "llama", ErrorKind::kConfig, "only Llama-architecture models are supported", source,
                   ": model_type is '", model_type, "'");
  SFTGO_CHECK(get_or<std::string>(j, "hidden_act", "silu", source) == "silu", ErrorKind::kConfig, source,
              ": hidden_act must be silu");
  SFTGO_CHECK(!get_or<bool>(j, "attention_bias", false, source) && !get_or<bool>(j, "mlp_bias", false, source),
              ErrorKind::kConfig, source, ": attention_bias/mlp_bias are not supported");

  LlamaConfig c;
  c.vocab_size = require_int(j, "vocab_size", source);
  c.hidden_size = require_int(j, "hidden_size", source);
  c.intermediate_size = require_int(j, "intermediate_size", source);
  c.num_hidden_layers = require_int(j, "num_hidden_layers", source);
  c.num_attention_heads = require_int(j, "num_attention_heads", source);
  c.num_key_value_heads = opt_int(j, "num_key_value_heads", source).value_or(c.num_attention_heads);
  check_count(c.num_attention_heads, kMaxDim, "num_attention_heads", source, "");
  const std::optional<int64_t> head_dim = opt_int(j, "head_dim", source);
  // Without an explicit head_dim, transformers uses hidden_size // num_attention_heads; a remainder
  // would silently drop part of every attention projection.
  SFTGO_CHECK(head_dim.has_value() || c.hidden_size % c.num_attention_heads == 0, ErrorKind::kConfig, source,
              ": hidden_size (", c.hidden_size, ") is not a multiple of num_attention_heads (", c.num_attention_heads,
              ") and there is no head_dim");
  c.head_dim = head_dim.value_or(c.hidden_size / c.num_attention_heads);
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, source);  // HF LlamaConfig default
  c.max_position_embeddings = opt_int(j, "max_position_embeddings", source).value_or(2048);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
  c.initializer_range = get_or<double>(j, "initializer_range", 0.02, source);
  c.bos_token_id = opt_int(j, "bos_token_id", source);
  c.pad_token_id = opt_int(j, "pad_token_id", source);
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer())
      c.eos_token_ids = {it->get<int64_t>()};
    else if (it->is_array())
      for (const auto& e : *it)
        if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int64_t>());
  }

  // RoPE: transformers 5 nests everything in rope_parameters; 4.x has rope_theta + rope_scaling.
  json rope = json::object();
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object())
    rope = *it;
  else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && it2->is_object())
    rope = *it2;
  c.rope_theta = get_or<double>(rope, "rope_theta", get_or<double>(j, "rope_theta", 10000.0, source), source);
  std::string rope_type =
      get_or<std::string>(rope, "rope_type", get_or<std::string>(rope, "type", "default", source), source);
  if (rope_type == "llama3") {
    RopeScaling s;
    s.factor = get_or<double>(rope, "factor", s.factor, source);
    s.low_freq_factor = get_or<double>(rope, "low_freq_factor", s.low_freq_factor, source);
    s.high_freq_factor = get_or<double>(rope, "high_freq_factor", s.high_freq_factor, source);
    s.original_max_position_embeddings =
        get_or<int64_t>(rope, "original_max_position_embeddings", c.max_position_embeddings, source);
    c.rope_scaling = s;
  } else {
    SFTGO_CHECK_HINT(rope_type == "default", ErrorKind::kConfig, "supported rope types: default, llama3", source,
                     ": rope type '", rope_type, "' is not supported");
  }
  c.validate(source);
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) p /= "config.json";
  std::ifstream in(p);
  SFTGO_CHECK_HINT(in.good(), ErrorKind::kIo, "pass a Hugging Face model directory", p.string(), ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), p.string());
}

void LlamaConfig::validate(const std::string& source) const {
  check_count(vocab_size, kMaxVocab, "vocab_size", source, "token ids are 32-bit");
  check_count(hidden_size, kMaxDim, "hidden_size", source, "");
  check_count(intermediate_size, kMaxDim, "intermediate_size", source, "");
  check_count(num_hidden_layers, kMaxLayers, "num_hidden_layers", source, "");
  check_count(num_attention_heads, kMaxDim, "num_attention_heads", source, "");
  check_count(num_key_value_heads, kMaxDim, "num_key_value_heads", source, "");
  check_count(head_dim, kMaxDim, "head_dim", source, "");
  SFTGO_CHECK(num_attention_heads % num_key_value_heads == 0, ErrorKind::kConfig, source, ": num_attention_heads (",
              num_attention_heads, ") must be a multiple of num_key_value_heads (", num_key_value_heads, ")");
  SFTGO_CHECK(head_dim % 2 == 0, ErrorKind::kConfig, source, ": head_dim = ", head_dim,
              " must be even (RoPE rotates pairs of dimensions)");
  check_count(max_position_embeddings, kMaxPositions, "max_position_embeddings", source,
              "RoPE positions are exact in fp32 only up to 2^24");
  check_positive(rope_theta, "rope_theta", source, "RoPE frequencies are rope_theta^(-2i/head_dim)");
  check_positive(rms_norm_eps, "rms_norm_eps", source, "RMSNorm divides by sqrt(mean(x^2) + eps)");
  SFTGO_CHECK(std::isfinite(initializer_range) && initializer_range >= 0, ErrorKind::kConfig, source,
              ": initializer_range = ", initializer_range, " is out of range (expected a finite number >= 0)");
  if (rope_scaling) {
    const RopeScaling& r = *rope_scaling;
    check_positive(r.factor, "rope_scaling.factor", source, "low frequencies are divided by it");
    check_positive(r.low_freq_factor, "rope_scaling.low_freq_factor", source, "wavelengths are divided by it");
    check_positive(r.high_freq_factor, "rope_scaling.high_freq_factor", source, "wavelengths are divided by it");
    SFTGO_CHECK(r.high_freq_factor > r.low_freq_factor, ErrorKind::kConfig, source, ": rope_scaling.high_freq_factor (",
                r.high_freq_factor, ") must exceed rope_scaling.low_freq_factor (", r.low_freq_factor,
                "): the smoothing band divides by their difference");
    check_count(r.original_max_position_embeddings, kMaxPositions, "rope_scaling.original_max_position_embeddings",
                source, "");
  }
}

int64_t LlamaConfig::num_parameters() const {
  int64_t attn = hidden_size * head_dim * (2 * num_attention_heads + 2 * num_key_value_heads);
  int64_t mlp = 3 * hidden_size * intermediate_size;
  int64_t block = attn + mlp + 2 * hidden_size;
  return vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * block + hidden_size;
}

std::string LlamaConfig::to_json(const std::string& dtype) const {
  json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"max_position_embeddings", max_position_embeddings},
      {"tie_word_embeddings", tie_word_embeddings},
      {"initializer_range", initializer_range},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mlp_bias", false},
      {"use_cache", true},
      {"torch_dtype", dtype},
  };
  if (rope_scaling)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling->factor},
                         {"low_freq_factor", rope_scaling->low_freq_factor},
                         {"high_freq_factor", rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling->original_max_position_embeddings}};
  else
    j["rope_scaling"] = nullptr;
  j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  if (eos_token_ids.size() == 1)
    j["eos_token_id"] = eos_token_ids[0];
  else if (!eos_token_ids.empty())
    j["eos_token_id"] = eos_token_ids;
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  return j.dump(2) + "\n";
}

std::vector<std::string> LlamaConfig::preset_names() {
  return {"llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "tiny"};
}

LlamaConfig LlamaConfig::preset(const std::string& requested) {
  // model.preset auto: the checkpoint's shape when there is one; without one, the demo's.
  const std::string name = requested == "auto" ? "tiny" : requested;
  LlamaConfig c;  // defaults are the shared Llama 3.x values (vocab, theta, eps, kv heads)
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};  // <|end_of_text|>, <|eom_id|>, <|eot_id|>
  c.rope_scaling = RopeScaling{};
  c.max_position_embeddings = 131072;
  auto shape = [&](int64_t h, int64_t inter, int64_t layers, int64_t heads, int64_t kv, bool tied, double factor) {
    c.hidden_size = h;
    c.intermediate_size = inter;
    c.num_hidden_layers = layers;
    c.num_attention_heads = heads;
    c.num_key_value_heads = kv;
    c.head_dim = h / heads;
    c.tie_word_embeddings = tied;
    c.rope_scaling->factor = factor;
  };
  if (name == "llama3.2-1b")
    shape(2048, 8192, 16, 32, 8, true, 32.0);
  else if (name == "llama3.2-3b")
    shape(3072, 8192, 28, 24, 8, true, 32.0);
  else if (name == "llama3.1-8b")
    shape(4096, 14336, 32, 32, 8, false, 8.0);
  else if (name == "llama3.1-70b")
    shape(8192, 28672, 80, 64, 8, false, 8.0);
  else if (name == "tiny") {
    // Real Llama-3 vocabulary (so the real tokenizer works) around a toy trunk; ~8.5M params.
    shape(64, 256, 2, 4, 2, true, 8.0);
    c.max_position_embeddings = 2048;
    c.rope_scaling->original_max_position_embeddings = 256;
  } else {
    SFTGO_FAIL_HINT(ErrorKind::kConfig, "presets: llama3.2-1b, llama3.2-3b, llama3.1-8b, llama3.1-70b, tiny, auto",
                    "unknown model preset '", name, "'");
  }
  return c;
}

namespace {

struct ShapeField {
  const char* hf_name;   // config.json's name
  const char* key;       // the sftgo override key
  int64_t LlamaConfig::*member;
  int64_t ShapeRequest::*override_value;
};
constexpr ShapeField kShapeFields[] = {
    {"num_hidden_layers", "model.num_layers", &LlamaConfig::num_hidden_layers, &ShapeRequest::num_layers},
    {"hidden_size", "model.hidden_size", &LlamaConfig::hidden_size, &ShapeRequest::hidden_size},
    {"intermediate_size", "model.intermediate_size", &LlamaConfig::intermediate_size, &ShapeRequest::intermediate_size},
    {"num_attention_heads", "model.num_heads", &LlamaConfig::num_attention_heads, &ShapeRequest::num_heads},
    {"num_key_value_heads", "model.num_kv_heads", &LlamaConfig::num_key_value_heads, &ShapeRequest::num_kv_heads},
    {"vocab_size", "model.vocab_size", &LlamaConfig::vocab_size, &ShapeRequest::vocab_size},
};

bool same_shape(const LlamaConfig& a, const LlamaConfig& b) {
  for (const auto& f : kShapeFields)
    if (a.*(f.member) != b.*(f.member)) return false;
  return true;
}

}  // namespace

void check_checkpoint_shape(const LlamaConfig& checkpoint, const std::string& source, const ShapeRequest& want) {
  if (want.preset == "auto") return;  // the whole shape comes from the checkpoint, overrides included
  const bool use_preset = !want.preset.empty();
  const LlamaConfig preset = use_preset ? LlamaConfig::preset(want.preset) : LlamaConfig{};
  std::string diffs;
  for (const auto& f : kShapeFields) {
    const int64_t override_value = want.*(f.override_value);
    if (override_value <= 0 && !use_preset) continue;
    const int64_t asked = override_value > 0 ? override_value : preset.*(f.member);
    const int64_t have = checkpoint.*(f.member);
    if (asked == have) continue;
    if (!diffs.empty()) diffs += ", ";
    diffs += std::string(f.hf_name) + " " + std::to_string(asked) + " (" +
             (override_value > 0 ? std::string(f.key) : "model.preset " + want.preset) + ") vs " +
             std::to_string(have);
  }
  if (diffs.empty()) return;
  std::string matching;
  for (const auto& name : LlamaConfig::preset_names())
    if (same_shape(LlamaConfig::preset(name), checkpoint)) matching = name;
  std::string hint = "with model.path the shape comes from its config.json: set model.preset: auto (it then "
                     "ignores the model.* shape overrides)";
  if (!matching.empty()) hint += ", or " + matching + ", the preset it matches";
  SFTGO_FAIL_HINT(ErrorKind::kConfig, hint, "model.path ", source, " is not the model the config describes: ", diffs,
                  " (config vs checkpoint)");
}

}  // namespace sftgo::model
