// Cross-field validation and the outputs of a Config: YAML, the start-up table, the changes against a
// saved config and the Markdown reference.
#include "sftgo/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "schema.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {

using config_detail::Field;
using config_detail::fields_of;

int zero_stage(const DistConfig& dist) {
  SFTGO_CHECK_HINT(!dist.zero1 || dist.zero <= 1, ErrorKind::kConfig, "set only dist.zero: 2 (dist.zero1 is the older key)",
                   "dist.zero1: true asks for ZeRO stage 1, but dist.zero is ", dist.zero);
  return dist.zero1 ? 1 : static_cast<int>(dist.zero);
}

void validate_config(const Config& c) {
  SFTGO_CHECK_HINT(c.dist.offload_optimizer != "cpu" || zero_stage(c.dist) >= 2, ErrorKind::kConfig,
                   "set dist.zero: 2 or 3 with dist.offload_optimizer: cpu",
                   "dist.offload_optimizer: cpu needs the sharded gradients of ZeRO stage 2 or 3, but dist.zero is ",
                   zero_stage(c.dist));
  // Task scoring runs on rank 0 alone, and stage 3's weights exist only while every rank gathers them.
  SFTGO_CHECK_HINT(zero_stage(c.dist) < 3 || c.train.eval_tasks.empty(), ErrorKind::kConfig,
                   "score the saved checkpoints with `sftgo-train eval` instead, or use dist.zero: 2",
                   "train.eval_tasks cannot run with dist.zero: 3 (tasks are scored on rank 0 alone, and "
                   "stage 3 gathers each layer's weights on every rank together)");
  for (const auto& part : split(c.logging.report_to, ',')) {
    const std::string name = trim(part);
    SFTGO_CHECK(name.empty() || name == "tensorboard" || name == "wandb" || name == "mlflow", ErrorKind::kConfig,
                "logging.report_to: unknown tracker '", name,
                "' (expected a comma-separated list of tensorboard, wandb, mlflow)");
  }
  SFTGO_CHECK(c.loss.lambda_min <= c.loss.lambda_max, ErrorKind::kConfig, "loss.lambda_min (", c.loss.lambda_min,
              ") must not exceed loss.lambda_max (", c.loss.lambda_max, ")");
  SFTGO_CHECK_HINT(c.train.global_batch_size % c.train.micro_batch_size == 0, ErrorKind::kConfig,
                   "pick a micro batch size that divides the global batch", "train.global_batch_size (",
                   c.train.global_batch_size, ") is not a multiple of train.micro_batch_size (",
                   c.train.micro_batch_size, ")");
  SFTGO_CHECK(!c.data.path.empty(), ErrorKind::kConfig, "data.path is empty: name the training data file");
  // The two set-up checks of the trainer that need nothing but the config, so `sftgo-train config`
  // refuses what training would (src/train/setup.cpp keeps them for programmatic use).
  SFTGO_CHECK_HINT(c.train.precision != "bf16_autocast" || c.model.dtype == "float32", ErrorKind::kConfig,
                   "set model.dtype: float32, or use train.precision: bf16 for bf16 weights",
                   "train.precision bf16_autocast keeps fp32 weights (autocast casts them per op) but model.dtype is ",
                   c.model.dtype);
  SFTGO_CHECK(c.train.eval_every == 0 || !c.data.eval_path.empty(), ErrorKind::kConfig,
              "train.eval_every is set but data.eval_path is empty: name the held-out data file");
  SFTGO_CHECK(!c.tokenizer.path.empty(), ErrorKind::kConfig, "tokenizer.path is empty");
  SFTGO_CHECK(!c.grouping.function.empty(), ErrorKind::kConfig,
              "grouping.function is empty (use 'none' for plain SFT)");
  const bool needs_groups = c.loss.objective != "ce";
  SFTGO_CHECK_HINT(!(needs_groups && c.grouping.function == "none"), ErrorKind::kConfig,
                   "set grouping.function (tfidf, llmlingua2, rho1, ...) or loss.objective: ce", "loss.objective '",
                   c.loss.objective, "' needs important-token groups but grouping.function is 'none'");
  SFTGO_CHECK(c.model.num_kv_heads <= 0 || c.model.num_heads <= 0 || c.model.num_heads % c.model.num_kv_heads == 0,
              ErrorKind::kConfig, "model.num_heads (", c.model.num_heads,
              ") must be a multiple of model.num_kv_heads (", c.model.num_kv_heads, ")");
  // bf16 weights under train.precision fp32 would train pure bf16 (bf16 gradients, AdamW moments and
  // updates; at lr 1e-5 most updates round away). The docs name precision bf16 for bf16 weights.
  SFTGO_CHECK_HINT(!(c.model.dtype == "bfloat16" && c.train.precision == "fp32"), ErrorKind::kConfig,
                   "set train.precision: bf16 (bf16 weights and compute, fp32 master weights and AdamW state), or "
                   "model.dtype: float32 for fp32 training",
                   "model.dtype is bfloat16 but train.precision is fp32: that would update bf16 weights with bf16 "
                   "gradients and AdamW state, where small updates round away");
  // An adapter to start from means LoRA training; without lora.enabled it was ignored (full fine-tuning).
  SFTGO_CHECK_HINT(c.lora.enabled || c.lora.adapter_path.empty(), ErrorKind::kConfig,
                   "set lora.enabled: true to train that adapter, or lora.adapter_path: \"\" for full fine-tuning",
                   "lora.adapter_path is '", c.lora.adapter_path,
                   "' but lora.enabled is false: the adapter would be ignored and the whole model trained");
}

std::vector<std::string> config_keys() {
  Config c;
  return config_detail::keys_of(fields_of(c));
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;
  auto fields = fields_of(copy);
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  for (const auto& f : fields) {
    const auto dot = f.key.find('.');
    const std::string sec = f.key.substr(0, dot);
    if (sec != section) {
      if (!section.empty()) out << YAML::EndMap;
      out << YAML::Key << sec << YAML::Value << YAML::BeginMap;
      section = sec;
    }
    out << YAML::Key << f.key.substr(dot + 1) << YAML::Value;
    std::visit(
        [&](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (f.list) {  // [a, b]: the form users write (a comma string loads too)
              out << YAML::Flow << YAML::BeginSeq;
              for (const auto& name : split(*p, ','))
                if (!trim(name).empty()) out << trim(name);
              out << YAML::EndSeq;
            } else {
              out << YAML::DoubleQuoted << *p;
            }
          }
          else
            out << config_detail::value_string(f.ptr);
        },
        f.ptr);
  }
  if (!section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> config_changes(const std::string& saved_yaml, const Config& now) {
  // Settings that change how a run is logged, saved or connected, never the weights it trains.
  static const std::set<std::string> kBookkeeping = {
      "run.log_level",   "train.log_every",       "train.save_every",  "train.keep_last", "train.save_final",
      "train.intermediate_checkpoints",
      "train.gpu_peak_tflops", "data.cache_dir", "dist.master_addr", "dist.master_port", "dist.timeout_s",
      "logging.report_to", "logging.python"};
  YAML::Node saved;
  try {
    saved = YAML::Load(saved_yaml);
  } catch (const YAML::Exception&) {
  }
  if (!saved.IsMap()) return {"(the saved config could not be read)"};
  Config copy = now;
  std::vector<std::string> out;
  for (const auto& f : fields_of(copy)) {
    if (kBookkeeping.count(f.key)) continue;
    const auto dot = f.key.find('.');
    const YAML::Node section = saved[f.key.substr(0, dot)];
    if (!section || !section.IsMap()) continue;  // a missing key gives an invalid node: test it first
    const YAML::Node value = section[f.key.substr(dot + 1)];
    if (!value || !value.IsScalar()) continue;
    const std::string before = value.Scalar();
    const std::string after = config_detail::value_string(f.ptr);
    if (before == after) continue;
    const bool text = std::holds_alternative<std::string*>(f.ptr);
    auto shown = [&](const std::string& v) { return text ? "\"" + v + "\"" : v; };
    out.push_back(f.key + ": " + shown(before) + " -> " + shown(after));
  }
  return out;
}

std::string config_table(const LoadedConfig& loaded) {
  Config copy = loaded.config;
  auto fields = fields_of(copy);
  size_t wk = 3, wv = 5;
  for (const auto& f : fields) {
    wk = std::max(wk, f.key.size());
    wv = std::min<size_t>(48, std::max(wv, config_detail::value_string(f.ptr).size()));
  }
  auto pad = [](std::string s, size_t w) {
    if (s.size() > w) s = s.substr(0, w - 3) + "...";
    return s + std::string(w - s.size(), ' ');
  };
  std::ostringstream os;
  os << pad("key", wk) << "  " << pad("value", wv) << "  origin\n";
  os << std::string(wk, '-') << "  " << std::string(wv, '-') << "  ------\n";
  for (const auto& f : fields) {
    auto it = loaded.origins.find(f.key);
    os << pad(f.key, wk) << "  " << pad(config_detail::value_string(f.ptr), wv) << "  "
       << (it == loaded.origins.end() ? "default" : it->second.source) << "\n";
  }
  return os.str();
}

std::string config_reference_markdown() {
  Config c;
  auto fields = fields_of(c);
  std::ostringstream os;
  os << "# Config reference\n\n"
     << "Generated from `src/config/schema.cpp` by `sftgo-train config --reference`; a test keeps this file\n"
     << "in step with the code. Configs are YAML with one mapping per section; any key can be overridden on\n"
     << "the command line with `--set section.key=value` (repeatable, applied in order after the file).\n"
     << "Unknown keys, wrong types and out-of-range values are errors that name the file and line, and so\n"
     << "are a key or section given twice and a second YAML document (`---`). An unknown key comes with the\n"
     << "sftgo key it most likely means, also from other trainers' names (`learning_rate` -> `optim.lr`,\n"
     << "`gradient_accumulation_steps` -> `train.global_batch_size`).\n"
     << "Relative paths are taken from the directory `sftgo-train` runs in.\n";
  std::string section;
  for (const auto& f : fields) {
    const std::string sec = f.key.substr(0, f.key.find('.'));
    if (sec != section) {
      os << "\n## " << sec << "\n\n| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
      section = sec;
    }
    const std::string allowed = !f.choices.empty() ? join(f.choices, ", ") : config_detail::allowed_text(f, "");
    std::string def = config_detail::value_string(f.ptr);
    os << "| `" << f.key << "` | " << config_detail::type_name(f) << " | `" << (def.empty() ? "\"\"" : def)
       << "` | " << allowed << " | " << f.doc << " |\n";
  }
  return os.str();
}

}  // namespace sftgo
