// PEFT adapter_config.json and the adapter's tensor shapes, without LibTorch (see lora_config.h).
#include "sftgo/model/lora_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::model {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kAdapterConfigName = "adapter_config.json";

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

double LoraOptions::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                                 "gate_proj", "up_proj", "down_proj", "lm_head"};
  return names;
}

std::vector<std::string> parse_lora_target_modules(const std::string& csv) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= csv.size()) {
    size_t end = csv.find(',', start);
    if (end == std::string::npos) end = csv.size();
    std::string name = csv.substr(start, end - start);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    SFTGO_CHECK(!name.empty(), ErrorKind::kConfig, "lora.target_modules: empty name in '", csv, "'");
    if (name == "all-linear") {
      for (size_t i = 0; i + 1 < lora_target_names().size(); ++i) out.push_back(lora_target_names()[i]);
    } else {
      out.push_back(name);
    }
    start = end + 1;
  }
  LoraOptions probe;
  probe.target_modules = out;
  probe.validate();  // unknown or repeated names
  const auto& n = lora_target_names();
  std::sort(out.begin(), out.end(), [&](const std::string& x, const std::string& y) {
    return std::find(n.begin(), n.end(), x) < std::find(n.begin(), n.end(), y);
  });
  return out;
}

void LoraOptions::validate() const {
  SFTGO_CHECK(rank >= 1, ErrorKind::kConfig, "lora.rank must be >= 1, got ", rank);
  SFTGO_CHECK(std::isfinite(alpha) && alpha > 0, ErrorKind::kConfig, "lora.alpha must be > 0, got ", alpha);
  SFTGO_CHECK(dropout >= 0 && dropout < 1, ErrorKind::kConfig, "lora.dropout must be in [0, 1), got ", dropout);
  SFTGO_CHECK(!target_modules.empty(), ErrorKind::kConfig, "lora.target_modules must name at least one module");
  const auto& known = lora_target_names();
  std::set<std::string> seen;
  for (const auto& t : target_modules) {
    SFTGO_CHECK(std::find(known.begin(), known.end(), t) != known.end(), ErrorKind::kConfig,
                "lora.target_modules: unknown module '", t,
                "'; expected any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head");
    SFTGO_CHECK(seen.insert(t).second, ErrorKind::kConfig, "lora.target_modules lists '", t, "' twice");
  }
  SFTGO_CHECK(init == "default" || init == "gaussian", ErrorKind::kConfig,
              "lora.init must be 'default' (PEFT: Kaiming-uniform A, zero B) or 'gaussian', got '", init, "'");
}

LoraOptions read_lora_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kAdapterConfigName).string();
  SFTGO_CHECK_HINT(fs::exists(path), ErrorKind::kConfig, "pass a PEFT LoRA adapter directory", path, ": not found");
  return parse_lora_config(read_file(path), path);
}

LoraOptions parse_lora_config(std::string_view text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, path, ": not valid JSON: ", e.what());
  }
  SFTGO_CHECK(j.is_object(), ErrorKind::kConfig, path, ": expected a JSON object");
  auto field = [&](const char* key) -> const json* { return j.contains(key) && !j[key].is_null() ? &j[key] : nullptr; };
  auto unsupported = [&](const char* key, const std::string& want) {
    SFTGO_FAIL(ErrorKind::kConfig, path, ": '", key, "' = ", j[key].dump(), " is not supported (expected ", want, ")");
  };
  const json* type = field("peft_type");
  SFTGO_CHECK(type && type->is_string() && *type == "LORA", ErrorKind::kConfig, path,
              ": 'peft_type' must be \"LORA\", got ", type ? type->dump() : "nothing");
  LoraOptions o;
  try {
    const json* r = field("r");
    SFTGO_CHECK(r && r->is_number_integer(), ErrorKind::kConfig, path, ": 'r' must be an integer");
    o.rank = r->get<int64_t>();
    const json* a = field("lora_alpha");
    o.alpha = a ? a->get<double>() : 8.0;  // PEFT's default
    const json* d = field("lora_dropout");
    o.dropout = d ? d->get<double>() : 0.0;
    const json* rs = field("use_rslora");
    o.use_rslora = rs ? rs->get<bool>() : false;
    const json* base = field("base_model_name_or_path");
    if (base && base->is_string()) o.base_model_name_or_path = base->get<std::string>();
    const json* t = field("target_modules");
    SFTGO_CHECK(t != nullptr, ErrorKind::kConfig, path, ": 'target_modules' is missing");
    if (t->is_string()) {
      // PEFT's string form is a regex matched against full module names; "all-linear" is the one
      // shorthand we resolve (for a causal LM: every linear layer but the output head).
      if (*t != "all-linear") unsupported("target_modules", "a list of module names, or \"all-linear\"");
      o.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    } else {
      o.target_modules = t->get<std::vector<std::string>>();
    }
    std::sort(o.target_modules.begin(), o.target_modules.end(), [](const std::string& x, const std::string& y) {
      const auto& n = lora_target_names();
      return std::find(n.begin(), n.end(), x) < std::find(n.begin(), n.end(), y);
    });
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, path, ": ", e.what());
  }
  // Options that change the maths: accepted only at their plain-LoRA values.
  if (field("bias") && j["bias"] != "none") unsupported("bias", "\"none\"");
  if (field("use_dora") && j["use_dora"] != false) unsupported("use_dora", "false");
  if (field("fan_in_fan_out") && j["fan_in_fan_out"] != false) unsupported("fan_in_fan_out", "false");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (field(key) && !j[key].empty()) unsupported(key, "{} (one rank and alpha for every layer)");
  for (const char* key : {"modules_to_save", "layers_to_transform", "layers_pattern", "exclude_modules"})
    if (field(key) && !j[key].empty()) unsupported(key, "null");
  if (field("task_type") && j["task_type"] != "CAUSAL_LM") unsupported("task_type", "\"CAUSAL_LM\"");
  try {
    o.validate();
  } catch (const Error& e) {
    SFTGO_FAIL(ErrorKind::kConfig, path, ": ", e.what());
  }
  return o;
}

void check_adapter_tensors(const LoraOptions& o, const std::vector<io::TensorView>& tensors,
                           const std::string& config_path, const std::string& weights_path) {
  bool any = false;
  for (const io::TensorView& v : tensors) {
    const bool a = v.name.ends_with(".lora_A.weight"), b = v.name.ends_with(".lora_B.weight");
    if (!a && !b) continue;
    any = true;
    const bool ok = v.shape.size() == 2 && v.shape[a ? 0 : 1] == o.rank;
    SFTGO_CHECK_HINT(ok, ErrorKind::kConfig, "set 'r' to the rank the adapter was trained with", config_path,
                     ": 'r' = ", o.rank, " does not match ", weights_path, ": tensor '", v.name, "' of shape ",
                     shape_text(v.shape), a ? " (lora_A is [r, in_features])" : " (lora_B is [out_features, r])");
  }
  SFTGO_CHECK(any, ErrorKind::kModel, weights_path, ": holds no lora_A/lora_B tensors (not a LoRA adapter)");
}

}  // namespace sftgo::model
