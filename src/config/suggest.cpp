// Suggestions for an unknown config key: other trainers' names, the same name elsewhere, shared words.
#include <algorithm>
#include <cctype>
#include <set>
#include <string_view>

#include "schema.h"
#include "sftgo/core/strings.h"

namespace sftgo::config_detail {
namespace {

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

}  // namespace

std::vector<std::string> keys_of(const std::vector<Field>& fields) {
  std::vector<std::string> keys;
  keys.reserve(fields.size());
  for (const auto& f : fields) keys.push_back(f.key);
  return keys;
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

}  // namespace sftgo::config_detail
