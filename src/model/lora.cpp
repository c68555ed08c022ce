// LoRA adapters: add, name (PEFT), save/load (PEFT adapter directory), merge.
#include "sftgo/model/lora.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"
#include "finite.h"
#include "shape_str.h"

namespace sftgo::model {

using nlohmann::json;
using torch::Tensor;
namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

struct Target {
  std::string name;    // our module path: layers.N.self_attn.q_proj, lm_head
  std::string kind;    // q_proj ... lm_head
  LinearImpl* linear;  // null when the model has no such layer (tied lm_head)
};

// Every Linear that may carry an adapter, in model (parameter registration) order.
std::vector<Target> all_targets(const LlamaModelImpl& cmodel) {
  // The holders hand out const pointers on a const model; the adapter code mutates through them
  // only from the non-const entry points.
  auto& model = const_cast<LlamaModelImpl&>(cmodel);
  std::vector<Target> out;
  for (size_t i = 0; i < model.layers->size(); ++i) {
    auto* b = model.layers->ptr<BlockImpl>(i).get();
    const std::string p = "layers." + std::to_string(i) + ".";
    out.push_back({p + "self_attn.q_proj", "q_proj", b->self_attn->q_proj.get()});
    out.push_back({p + "self_attn.k_proj", "k_proj", b->self_attn->k_proj.get()});
    out.push_back({p + "self_attn.v_proj", "v_proj", b->self_attn->v_proj.get()});
    out.push_back({p + "self_attn.o_proj", "o_proj", b->self_attn->o_proj.get()});
    out.push_back({p + "mlp.gate_proj", "gate_proj", b->mlp->gate_proj.get()});
    out.push_back({p + "mlp.up_proj", "up_proj", b->mlp->up_proj.get()});
    out.push_back({p + "mlp.down_proj", "down_proj", b->mlp->down_proj.get()});
  }
  out.push_back({"lm_head", "lm_head", model.lm_head ? model.lm_head.get() : nullptr});
  return out;
}

std::vector<Target> adapted(const LlamaModelImpl& model) {
  std::vector<Target> out;
  for (auto& t : all_targets(model))
    if (t.linear != nullptr && t.linear->lora_A.defined()) out.push_back(t);
  return out;
}

// PEFT's key: the model is wrapped as base_model.model (PeftModel -> LoraModel -> LlamaForCausalLM),
// whose decoder lives under "model." (lm_head does not); the adapter name ("default") is dropped on save.
std::string peft_prefix(const Target& t) {
  return t.kind == "lm_head" ? "base_model.model.lm_head" : "base_model.model.model." + t.name;
}

using detail::shape_str;

}  // namespace

std::vector<Tensor> apply_lora(LlamaModelImpl& model, const LoraOptions& options, uint64_t seed) {
  options.validate();
  SFTGO_CHECK(!has_lora(model), ErrorKind::kModel, "the model already has LoRA adapters");
  const bool wants_head = std::count(options.target_modules.begin(), options.target_modules.end(), "lm_head") > 0;
  SFTGO_CHECK(!wants_head || model.lm_head, ErrorKind::kConfig,
              "lora.target_modules: lm_head needs an untied LM head, but this model ties it to embed_tokens "
              "(tie_word_embeddings true)");
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) p.requires_grad_(false);
  // A is drawn on the CPU from `seed` in model order, so every device and rank gets the same adapters.
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  const auto dev = f32.device(model.device());
  std::vector<Tensor> params;
  for (auto& t : all_targets(model)) {
    if (t.linear == nullptr ||
        std::find(options.target_modules.begin(), options.target_modules.end(), t.kind) == options.target_modules.end())
      continue;
    const int64_t out = t.linear->weight.size(0), in = t.linear->weight.size(1), r = options.rank;
    Tensor a;
    if (options.init == "gaussian") {
      a = at::normal(0.0, 1.0 / static_cast<double>(r), {r, in}, gen, f32);  // PEFT: normal_(std=1/r)
    } else {
      // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(in).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      a = at::empty({r, in}, f32).uniform_(-bound, bound, gen);
    }
    LinearImpl& l = *t.linear;
    l.lora_A = l.register_parameter("lora_A", a.to(dev), /*requires_grad=*/true);
    l.lora_B = l.register_parameter("lora_B", torch::zeros({out, r}, dev), /*requires_grad=*/true);
    l.lora_scaling = options.scaling();
    l.lora_dropout = options.dropout;
    l.lora_disabled = false;
    params.push_back(l.lora_A);
    params.push_back(l.lora_B);
  }
  SFTGO_CHECK(!params.empty(), ErrorKind::kConfig, "lora.target_modules matched no layer of the model");
  model.lora = std::make_shared<const LoraOptions>(options);
  return params;
}

bool has_lora(const LlamaModelImpl& model) { return model.lora != nullptr; }

std::vector<std::pair<std::string, Tensor>> trained_named_parameters(const LlamaModelImpl& model) {
  return has_lora(model) ? lora_named_parameters(model) : model.hf_named_parameters();
}

const LoraOptions& lora_options(const LlamaModelImpl& model) {
  SFTGO_CHECK(has_lora(model), ErrorKind::kModel, "the model has no LoRA adapters");
  return *model.lora;
}

std::vector<std::pair<std::string, Tensor>> lora_named_parameters(const LlamaModelImpl& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& t : adapted(model)) {
    out.emplace_back(peft_prefix(t) + ".lora_A.weight", t.linear->lora_A);
    out.emplace_back(peft_prefix(t) + ".lora_B.weight", t.linear->lora_B);
  }
  return out;
}

void set_lora_disabled(LlamaModelImpl& model, bool disabled) {
  for (auto& t : adapted(model)) t.linear->lora_disabled = disabled;
}

void save_lora_adapter(const LlamaModelImpl& model, const std::string& dir) {
  const LoraOptions& o = lora_options(model);
  json cfg = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", o.base_model_name_or_path.empty() ? json(nullptr) : json(o.base_model_name_or_path)},
      {"revision", nullptr},
      {"inference_mode", true},
      {"r", o.rank},
      {"lora_alpha", o.alpha},
      {"lora_dropout", o.dropout},
      {"target_modules", o.target_modules},
      {"bias", "none"},
      {"use_rslora", o.use_rslora},
      {"use_dora", false},
      {"fan_in_fan_out", false},
      {"init_lora_weights", o.init == "gaussian" ? json("gaussian") : json(true)},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
  };
  std::vector<io::TensorSource> sources;
  for (auto& [name, p] : lora_named_parameters(model)) {
    io::TensorSource s;
    s.name = name;
    s.dtype = io::DType::kF32;
    s.shape = p.sizes().vec();
    Tensor param = p;
    s.bytes = [param]() {
      auto host = std::make_shared<Tensor>(param.detach().to(torch::kCPU, torch::kFloat).contiguous());
      return std::shared_ptr<const std::byte>(host, static_cast<const std::byte*>(host->data_ptr()));
    };
    sources.push_back(std::move(s));
  }
  io::ShardedWriteOptions w;
  w.max_shard_bytes = UINT64_MAX;  // PEFT reads one adapter_model.safetensors, never shards
  w.base_name = "adapter_model";
  w.metadata = {{"format", "pt"}};
  io::write_sharded_safetensors(dir, sources, w, {{kConfigFile, cfg.dump(2) + "\n"}});
}

namespace {

// Finite tensors can still overflow: |(B A) s| <= s r max|B| max|A| per element, and the forward
// pass or a merge computes exactly that product. Refuse a lora_alpha (scaling) that can take it past
// float32's range, naming the field and the layer, instead of producing Inf/NaN with exit 0.
void check_adapter_scale(const LlamaModelImpl& model, const std::string& dir) {
  const LoraOptions& o = lora_options(model);
  const double s = o.scaling();
  for (const auto& t : adapted(model)) {
    const LinearImpl& l = *t.linear;
    const double bound = s * static_cast<double>(o.rank) * detail::max_abs(l.lora_A) * detail::max_abs(l.lora_B);
    SFTGO_CHECK_HINT(std::isfinite(s) && bound < 1e30, ErrorKind::kConfig,
                     "lora_alpha (scaling = lora_alpha / r, or / sqrt(r) with use_rslora) must keep the update finite",
                     (fs::path(dir) / kConfigFile).string(), ": 'lora_alpha' = ", o.alpha, " gives scaling ", s,
                     ", and ", peft_prefix(t), "'s update can reach ", bound, " (float32 overflows at 3.4e38)");
  }
}

}  // namespace

void load_lora_adapter(LlamaModelImpl& model, const std::string& dir) {
  const LoraOptions o = read_lora_config(dir);
  const std::string path = (fs::path(dir) / kWeightsFile).string();
  SFTGO_CHECK_HINT(fs::exists(path), ErrorKind::kModel,
                   "only safetensors adapters are read; convert adapter_model.bin with PEFT first", path,
                   ": not found");
  if (has_lora(model)) {
    // Resume: adapters already added (from the run's config); the file must be for the same shape.
    const LoraOptions& cur = lora_options(model);
    SFTGO_CHECK(cur.rank == o.rank && cur.target_modules == o.target_modules, ErrorKind::kConfig, dir,
                ": adapter (r=", o.rank, ") does not match the model's adapters (r=", cur.rank,
                ") or targets another module set");
    // The adapters' scaling comes from the run's config: an adapter saved with another alpha or
    // rsLoRA setting would silently compute a different function.
    SFTGO_CHECK_HINT(cur.alpha == o.alpha && cur.use_rslora == o.use_rslora, ErrorKind::kConfig,
                     "set lora.alpha and lora.use_rslora to the adapter's values", dir, "/", kConfigFile,
                     ": adapter has lora_alpha ", o.alpha, ", use_rslora ", o.use_rslora ? "true" : "false",
                     " but the model's adapters have alpha ", cur.alpha, ", use_rslora ",
                     cur.use_rslora ? "true" : "false");
  }
  auto file = io::SafetensorsFile::open(path);
  // Before apply_lora allocates [r, in] and [out, r] for every target.
  check_adapter_tensors(o, file->tensors(), (fs::path(dir) / kConfigFile).string(), path);
  if (!has_lora(model)) apply_lora(model, o, /*seed=*/0);  // every tensor is overwritten below
  std::map<std::string, Tensor> params;
  for (auto& [name, p] : lora_named_parameters(model)) params.emplace(name, p);
  // PEFT also saves the whole base weight of a targeted lm_head (save_embedding_layers="auto");
  // from_pretrained loads it over the base model's, so do we. Optional: absent from our saves.
  std::set<std::string> optional;
  for (auto& t : adapted(model))
    if (t.kind == "lm_head") {
      params.emplace(peft_prefix(t) + ".base_layer.weight", t.linear->weight);
      optional.insert(peft_prefix(t) + ".base_layer.weight");
    }
  std::set<std::string> filled;
  torch::NoGradGuard no_grad;
  for (const io::TensorView& v : file->tensors()) {
    auto it = params.find(v.name);
    SFTGO_CHECK_HINT(it != params.end(), ErrorKind::kModel,
                     "the adapter does not match adapter_config.json or the model", path, ": unexpected tensor '",
                     v.name, "' (no such LoRA parameter for target_modules ", json(o.target_modules).dump(),
                     " on this model)");
    Tensor& p = it->second;
    SFTGO_CHECK(v.shape == p.sizes().vec(), ErrorKind::kModel, path, ": tensor '", v.name, "' has shape ",
                shape_str(v.shape), " but the model expects ", shape_str(p.sizes()));
    c10::ScalarType dt;
    switch (v.dtype) {
      case io::DType::kF32: dt = torch::kFloat; break;
      case io::DType::kF16: dt = torch::kHalf; break;
      case io::DType::kBF16: dt = torch::kBFloat16; break;
      default:
        SFTGO_FAIL(ErrorKind::kModel, path, ": tensor '", v.name, "' has dtype ", io::dtype_name(v.dtype),
                   "; adapters must be F32, F16 or BF16");
    }
    p.copy_(torch::from_blob(const_cast<std::byte*>(v.data), v.shape, torch::TensorOptions().dtype(dt)));
    SFTGO_CHECK_HINT(std::isfinite(detail::max_abs(p)), ErrorKind::kModel, "the adapter is damaged; re-export it",
                     path, ": tensor '", v.name, "' holds NaN or Inf values");
    filled.insert(v.name);
  }
  std::vector<std::string> missing;
  for (const auto& [name, p] : params)
    if (!filled.count(name) && !optional.count(name)) missing.push_back(name);
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    SFTGO_FAIL(ErrorKind::kModel, path, ": missing adapter tensors: ", list);
  }
  check_adapter_scale(model, dir);
}

Tensor lora_head_weight(const LlamaModelImpl& model) { return model.head_weight(); }

// Declared in llama.h: the one answer to "which head does the loss see", with or without adapters.
Tensor LlamaModelImpl::head_weight() const {
  if (residency_) residency_->acquire(WeightResidency::kOuterWeights, WeightResidency::kNone);  // ZeRO-3
  if (!lm_head) return embed_tokens->as_head();  // tied: paired with the forward (llama.h)
  const LinearImpl& l = *lm_head;
  if (!l.lora_A.defined() || l.lora_disabled) return l.weight;
  SFTGO_CHECK(l.lora_dropout == 0.0 || !l.is_training(), ErrorKind::kConfig,
              "lora.dropout must be 0 when lm_head is a LoRA target (the fused loss folds the head's adapter "
              "into its weight, where input dropout cannot be expressed); got ",
              l.lora_dropout);
  return (l.weight.to(torch::kFloat) + l.lora_B.mm(l.lora_A) * l.lora_scaling).to(l.weight.scalar_type());
}

void merge_lora(LlamaModelImpl& model) {
  lora_options(model);  // throws when there is nothing to merge
  torch::NoGradGuard no_grad;
  for (auto& t : adapted(model)) {
    LinearImpl& l = *t.linear;
    // PEFT's delta_weight: (B @ A) * scaling, [out, in] in fp32; one rounding to the weight dtype.
    Tensor delta = l.lora_B.to(torch::kFloat).mm(l.lora_A.to(torch::kFloat)) * l.lora_scaling;
    l.weight.copy_(l.weight.to(torch::kFloat) + delta);
    // A sum of finite weights can still overflow the weight dtype (fp16 at 65504): never write Inf.
    SFTGO_CHECK_HINT(std::isfinite(detail::max_abs(l.weight)), ErrorKind::kModel,
                     "merge in float32 or rescale the adapter", "merging LoRA into ", peft_prefix(t),
                     ".weight gives NaN or Inf values");
    l.remove_lora();
  }
  model.lora.reset();
}

}  // namespace sftgo::model
