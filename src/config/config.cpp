#include "sftgo/config/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <set>
#include <sstream>

#include "schema.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {

using config_detail::Field;
using config_detail::fields_of;

namespace {

// Records where each YAML document starts (no node is built).
struct DocumentStarts : YAML::EventHandler {
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// "where" prefix for messages: "file.yaml:12" or "--set".
std::string location(const std::string& source, const YAML::Node& node) {
  if (source == "--set") return "--set";
  const auto mark = node.Mark();
  if (mark.line < 0) return source;
  return source + ":" + std::to_string(mark.line + 1);
}

std::vector<std::string> keys_of(const std::vector<Field>& fields) {
  std::vector<std::string> keys;
  keys.reserve(fields.size());
  for (const auto& f : fields) keys.push_back(f.key);
  return keys;
}

bool is_section(const std::vector<Field>& fields, const std::string& prefix) {
  for (const auto& f : fields)
    if (starts_with(f.key, prefix + ".")) return true;
  return false;
}

// Bounds as people write them: 16777216, not 1.67772e+07.
std::string bound_text(double v) {
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// ---- Suggestions for an unknown key -------------------------------------------------------------

// What other trainers (Hugging Face TrainingArguments and config.json, TRL, Axolotl, LLaMA-Factory)
// call sftgo's keys, matched on the unknown key's last component; `note` says how the meaning differs.
struct KeyAlias {
  const char* name;
  const char* key;
  const char* note;
};
constexpr KeyAlias kKeyAliases[] = {
    {"learning_rate", "optim.lr", ""},
    {"lr_scheduler_type", "optim.schedule", ""},
    {"lr_scheduler", "optim.schedule", ""},
    {"scheduler", "optim.schedule", ""},
    {"lr_schedule", "optim.schedule", ""},
    {"warmup_steps", "optim.warmup_steps", ""},
    {"num_warmup_steps", "optim.warmup_steps", ""},
    {"warmup_ratio", "optim.warmup_ratio", ""},
    {"weight_decay", "optim.weight_decay", ""},
    {"max_grad_norm", "optim.grad_clip", ""},
    {"gradient_clipping", "optim.grad_clip", ""},
    {"clip_grad_norm", "optim.grad_clip", ""},
    {"adam_beta1", "optim.beta1", ""},
    {"adam_beta2", "optim.beta2", ""},
    {"adam_epsilon", "optim.eps", ""},
    {"per_device_train_batch_size", "train.micro_batch_size", ""},
    {"train_micro_batch_size_per_gpu", "train.micro_batch_size", ""},
    {"batch_size", "train.global_batch_size", ""},
    {"train_batch_size", "train.global_batch_size", ""},
    {"total_batch_size", "train.global_batch_size", ""},
    {"gradient_accumulation_steps", "train.global_batch_size",
     " (sftgo sets the global batch; it accumulates global_batch_size / (micro_batch_size x ranks) micro-batches)"},
    {"grad_accum_steps", "train.global_batch_size",
     " (sftgo sets the global batch; it accumulates global_batch_size / (micro_batch_size x ranks) micro-batches)"},
    {"num_train_epochs", "train.epochs", ""},
    {"num_epochs", "train.epochs", ""},
    {"logging_steps", "train.log_every", ""},
    {"save_steps", "train.save_every", ""},
    {"eval_steps", "train.eval_every", ""},
    {"save_total_limit", "train.keep_last", ""},
    {"bf16", "train.precision", " (train.precision: bf16)"},
    {"fp16", "train.precision", " (fp32, bf16 or bf16_autocast; there is no fp16)"},
    {"mixed_precision", "train.precision", ""},
    {"max_seq_length", "data.max_seq_len", ""},
    {"max_length", "data.max_seq_len", ""},
    {"model_max_length", "data.max_seq_len", ""},
    {"cutoff_len", "data.max_seq_len", ""},
    {"sequence_len", "data.max_seq_len", ""},
    {"seq_length", "data.max_seq_len", ""},
    {"max_len", "data.max_seq_len", ""},
    {"sample_packing", "data.packing", ""},
    {"chat_template", "data.template", ""},
    {"dataset", "data.path", ""},
    {"dataset_path", "data.path", ""},
    {"train_file", "data.path", ""},
    {"data_path", "data.path", ""},
    {"validation_file", "data.eval_path", ""},
    {"eval_file", "data.eval_path", ""},
    {"model_name_or_path", "model.path", ""},
    {"base_model", "model.path", ""},
    {"torch_dtype", "model.dtype", ""},
    {"gradient_checkpointing", "model.activation_checkpointing", ""},
    {"num_hidden_layers", "model.num_layers", ""},
    {"num_attention_heads", "model.num_heads", ""},
    {"num_key_value_heads", "model.num_kv_heads", ""},
    {"initializer_range", "model.init_std", ""},
    {"tokenizer_name", "tokenizer.path", ""},
    {"tokenizer_name_or_path", "tokenizer.path", ""},
    {"lora_r", "lora.rank", ""},
    {"r", "lora.rank", ""},
    {"lora_alpha", "lora.alpha", ""},
    {"lora_dropout", "lora.dropout", ""},
    {"lora_target_modules", "lora.target_modules", ""},
    {"use_rslora", "lora.use_rslora", ""},
    {"output_dir", "run.output_dir", ""},
    {"run_name", "run.name", ""},
    {"seed", "run.seed", ""},
};

// The words of a key's last component, in one spelling: "learning_rate" -> {lr},
// "max_sequence_length" -> {max, seq, len}, "num_epochs" -> {num, epoch}.
std::set<std::string> key_words(std::string_view key) {
  const auto dot = key.rfind('.');
  if (dot != std::string_view::npos) key = key.substr(dot + 1);
  std::vector<std::string> raw;
  std::string word;
  for (char c : key) {
    if (c == '_' || c == '-') {
      if (!word.empty()) raw.push_back(word);
      word.clear();
    } else {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  if (!word.empty()) raw.push_back(word);
  static const std::pair<const char*, const char*> kSame[] = {
      {"gradient", "grad"}, {"sequence", "seq"},   {"length", "len"},   {"maximum", "max"},  {"minimum", "min"},
      {"epsilon", "eps"},   {"accumulation", "accum"}, {"number", "num"}, {"directory", "dir"}, {"clipping", "clip"},
      {"scheduler", "schedule"}};
  std::set<std::string> out;
  for (size_t i = 0; i < raw.size(); ++i) {
    std::string w = raw[i];
    if (w == "learning" && i + 1 < raw.size() && raw[i + 1] == "rate") {
      out.insert("lr");
      ++i;
      continue;
    }
    for (const auto& [from, to] : kSame)
      if (w == from) w = to;
    if (w.size() > 3 && w.back() == 's' && w[w.size() - 2] != 's') w.pop_back();  // steps -> step
    out.insert(w);
  }
  return out;
}

// Best guess for an unknown key: a name other trainers use, the same name in another section, the
// most shared words (at least half of all words), else the nearest spelling. "" when nothing is close.
std::string suggest_key(const std::string& key, const std::vector<std::string>& keys) {
  std::string last = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
  std::transform(last.begin(), last.end(), last.begin(), [](unsigned char c) { return c == '-' ? '_' : std::tolower(c); });
  for (const auto& a : kKeyAliases)
    if (last == a.name) return "did you mean '" + std::string(a.key) + "'?" + a.note;
  std::vector<std::string> same_name;  // "optim.max_steps" -> train.max_steps; "x.path" -> every *.path
  for (const auto& k : keys)
    if (k.substr(k.find('.') + 1) == last) same_name.push_back("'" + k + "'");
  if (!same_name.empty()) return "did you mean " + join(same_name, " or ") + "?";
  const auto want = key_words(key);
  const std::string section = key.find('.') == std::string::npos ? "" : key.substr(0, key.find('.'));
  std::string best;
  double best_score = 0;
  for (const auto& k : keys) {
    const auto have = key_words(k);
    size_t shared = 0;
    for (const auto& w : want) shared += have.count(w);
    const double score = static_cast<double>(shared) / static_cast<double>(want.size() + have.size() - shared) +
                         (k.compare(0, section.size() + 1, section + ".") == 0 ? 1e-3 : 0.0);  // tie: same section
    if (shared > 0 && score > best_score) {
      best_score = score;
      best = k;
    }
  }
  if (best_score >= 0.5) return "did you mean '" + best + "'?";
  const std::string near = closest_match(key, keys);
  return near.empty() ? "" : "did you mean '" + near + "'?";
}

[[noreturn]] void unknown_key(const std::string& where, const std::string& key, const std::vector<Field>& fields) {
  const std::string suggestion = suggest_key(key, keys_of(fields));
  SFTGO_FAIL_HINT(ErrorKind::kConfig, suggestion.empty() ? "see docs/config.md for the valid keys" : suggestion,
                  where, ": unknown config key '", key, "'");
}

// "in [1, 1000000000]", "> 0 and <= 1000000", "-1, or in [1, 1000000000]"; "" when unbounded.
std::string allowed_text(const Field& f, const char* in = "in ") {
  std::ostringstream os;
  if (f.or_value_) os << bound_text(*f.or_value_) << ", or ";
  if (f.min && f.max && !f.min_exclusive)
    os << in << "[" << bound_text(*f.min) << ", " << bound_text(*f.max) << "]";
  else if (f.min && f.max)
    os << "> " << bound_text(*f.min) << " and <= " << bound_text(*f.max);
  else if (f.min)
    os << (f.min_exclusive ? "> " : ">= ") << bound_text(*f.min);
  else if (f.max)
    os << "<= " << bound_text(*f.max);
  else
    return "";
  return os.str();
}

void check_range(const Field& f, double v, const std::string& where, const std::string& text) {
  if (f.or_value_ && v == *f.or_value_) return;
  bool low_ok = !f.min || (f.min_exclusive ? v > *f.min : v >= *f.min);
  bool high_ok = !f.max || v <= *f.max;
  if (low_ok && high_ok) return;
  SFTGO_FAIL(ErrorKind::kConfig, where, ": ", f.key, " = ", text, " is out of range (expected ", allowed_text(f), ")");
}

// Sets one field from a YAML scalar, checking type, range and allowed values.
void assign(const Field& f, const YAML::Node& node, const std::string& where) {
  SFTGO_CHECK(node.IsScalar() || node.IsNull(), ErrorKind::kConfig, where, ": ", f.key, ": expected a ",
              config_detail::type_name(f.ptr), " value, got a ", node.IsMap() ? "mapping" : "list");
  const std::string text = node.IsNull() ? "" : node.Scalar();
  struct Setter {
    const Field& f;
    const std::string& text;
    const std::string& where;
    bool is_null;
    void operator()(bool* p) const {
      if (text == "true" || text == "True" || text == "yes" || text == "on")
        *p = true;
      else if (text == "false" || text == "False" || text == "no" || text == "off")
        *p = false;
      else
        SFTGO_FAIL(ErrorKind::kConfig, where, ": ", f.key, ": expected true or false, got '", excerpt(text), "'");
    }
    void operator()(int64_t* p) const {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(text.c_str(), &end, 10);
      if (is_null || text.empty() || *end != '\0' || errno == ERANGE) {
        // Accept integral floats such as 1e3, which YAML users write for step counts.
        double d = std::strtod(text.c_str(), &end);
        SFTGO_CHECK(!text.empty() && *end == '\0' && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18,
                    ErrorKind::kConfig, where, ": ", f.key, ": expected an integer, got '", excerpt(text), "'");
        v = static_cast<long long>(d);
      }
      check_range(f, static_cast<double>(v), where, text);
      *p = v;
    }
    void operator()(double* p) const {
      char* end = nullptr;
      double v = std::strtod(text.c_str(), &end);
      SFTGO_CHECK(!is_null && !text.empty() && *end == '\0' && std::isfinite(v), ErrorKind::kConfig, where, ": ", f.key,
                  ": expected a number, got '", excerpt(text), "'");
      check_range(f, v, where, text);
      *p = v;
    }
    void operator()(std::string* p) const {
      if (!f.choices.empty() && std::find(f.choices.begin(), f.choices.end(), text) == f.choices.end()) {
        std::string hint = closest_match(text, f.choices);
        SFTGO_FAIL_HINT(ErrorKind::kConfig, hint.empty() ? "" : "did you mean '" + hint + "'?", where, ": ", f.key,
                        ": '", excerpt(text), "' is not one of ", join(f.choices, ", "));
      }
      *p = text;
    }
  };
  std::visit(Setter{f, text, where, node.IsNull()}, f.ptr);
}

Field* find_field(std::vector<Field>& fields, const std::string& key) {
  for (auto& f : fields)
    if (f.key == key) return &f;
  return nullptr;
}

void apply_map(const YAML::Node& map, const std::string& prefix, const std::string& source, std::vector<Field>& fields,
               std::map<std::string, ValueOrigin>& origins) {
  // yaml-cpp keeps every entry of a mapping, repeated keys included, and a lookup would see only
  // one: a repeated key (`lr: 3e-3` ... `lr: 1.0`) or section would silently take one value.
  std::map<std::string, std::string> seen;  // key -> where it was first given
  for (const auto& kv : map) {
    SFTGO_CHECK(kv.first.IsScalar(), ErrorKind::kConfig, location(source, kv.first), ": keys must be plain names");
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    const std::string where = location(source, kv.first);
    const auto [first, fresh] = seen.emplace(key, where);
    SFTGO_CHECK_HINT(fresh, ErrorKind::kConfig, "give each key (and each section) once", where, ": '", key,
                     "' is given twice (first at ", first->second, ")");
    if (Field* f = find_field(fields, key)) {
      assign(*f, kv.second, location(source, kv.second));
      origins[key].source = where;
    } else if (is_section(fields, key)) {
      SFTGO_CHECK(kv.second.IsMap() || kv.second.IsNull(), ErrorKind::kConfig, where, ": '", key,
                  "' is a section and needs a mapping of keys under it");
      if (kv.second.IsMap()) apply_map(kv.second, key, source, fields, origins);
    } else {
      unknown_key(where, key, fields);
    }
  }
}

void apply_override(const std::string& spec, std::vector<Field>& fields, std::map<std::string, ValueOrigin>& origins) {
  const auto eq = spec.find('=');
  SFTGO_CHECK_HINT(eq != std::string::npos && eq > 0, ErrorKind::kConfig, "write it as --set section.key=value",
                   "--set '", spec, "': expected key=value");
  const std::string key = trim(spec.substr(0, eq));
  const std::string value = spec.substr(eq + 1);
  Field* f = find_field(fields, key);
  if (f == nullptr) unknown_key("--set", key, fields);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    node = YAML::Node(value);  // not YAML: take the text as it is
  }
  if (!node.IsScalar() && !node.IsNull()) node = YAML::Node(value);
  assign(*f, node, "--set " + key);
  origins[key].source = "--set";
}

// grouping.eta_percentile (the paper's η) and grouping.top_k_percent state the same thing two ways:
// η = 90 means the top 10% are important. Setting both is an error unless they agree, which is how
// resolved_config.yaml writes them (so it loads back).
void resolve_eta(LoadedConfig& out) {
  auto& g = out.config.grouping;
  if (g.eta_percentile == -1.0) return;
  SFTGO_CHECK(g.eta_percentile > 0 && g.eta_percentile < 100, ErrorKind::kConfig,
              out.origins["grouping.eta_percentile"].source, ": grouping.eta_percentile = ", g.eta_percentile,
              " is out of range (expected a percentile in (0, 100), or -1 for unset)");
  const double share = 100.0 - g.eta_percentile;
  const auto& k_origin = out.origins["grouping.top_k_percent"].source;
  SFTGO_CHECK_HINT(k_origin == "default" || std::abs(g.top_k_percent - share) < 1e-9, ErrorKind::kConfig,
                   "set one of them (eta_percentile 90 = top_k_percent 10)", "grouping.eta_percentile (",
                   out.origins["grouping.eta_percentile"].source, ": ", g.eta_percentile,
                   ") and grouping.top_k_percent (", k_origin, ": ", g.top_k_percent, ") are both set and disagree");
  g.top_k_percent = share;
}

LoadedConfig load_from_node(const YAML::Node& root, const std::string& source,
                            const std::vector<std::string>& overrides) {
  LoadedConfig out;
  out.source_path = source;
  auto fields = fields_of(out.config);
  for (const auto& f : fields) out.origins[f.key] = ValueOrigin{};
  if (root && !root.IsNull()) {
    SFTGO_CHECK(root.IsMap(), ErrorKind::kConfig, source,
                ": expected a mapping of sections (run:, model:, ...) at the top");
    apply_map(root, "", source, fields, out.origins);
  }
  for (const auto& spec : overrides) apply_override(spec, fields, out.origins);
  resolve_eta(out);
  validate_config(out.config);
  return out;
}

}  // namespace

LoadedConfig load_config_text(const std::string& yaml_text, const std::string& source_name,
                              const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    // YAML::Load reads the first document only, so anything after a `---` would be silently
    // ignored; YAML::LoadAll loops forever on a stray ',' (yaml-cpp 0.7 yields an empty document
    // without consuming it; found by fuzz/fuzz_config.cpp). So: at most two parser steps here.
    std::istringstream in(yaml_text);
    YAML::Parser parser(in);
    DocumentStarts docs;
    parser.HandleNextDocument(docs);
    if (parser.HandleNextDocument(docs) && docs.starts.size() >= 2) {
      const YAML::Mark& second = docs.starts[1];
      SFTGO_CHECK(second.pos != docs.starts[0].pos, ErrorKind::kConfig, source_name, ":", second.line + 1,
                  ": invalid YAML: the parser cannot get past column ", second.column + 1,
                  " (a stray ',' or flow indicator?)");
      SFTGO_FAIL_HINT(ErrorKind::kConfig, "put every section in one document (remove the '---')", source_name, ":",
                      second.line + 1, ": a second YAML document; a config is one document");
    }
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, source_name, ":", e.mark.line + 1, ": invalid YAML: ", e.msg);
  }
  return load_from_node(root, source_name, overrides);
}

LoadedConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (path.empty()) return load_from_node(YAML::Node(), "", overrides);
  return load_config_text(read_file(path), path, overrides);
}

void validate_config(const Config& c) {
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
  return keys_of(fields_of(c));
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
          if constexpr (std::is_same_v<T, std::string>)
            out << YAML::DoubleQuoted << *p;
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
    const std::string allowed = !f.choices.empty() ? join(f.choices, ", ") : allowed_text(f, "");
    std::string def = config_detail::value_string(f.ptr);
    os << "| `" << f.key << "` | " << config_detail::type_name(f.ptr) << " | `" << (def.empty() ? "\"\"" : def)
       << "` | " << allowed << " | " << f.doc << " |\n";
  }
  return os.str();
}

}  // namespace sftgo
