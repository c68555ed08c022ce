#include "sftgo/train/options.h"

#include "sftgo/core/error.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::train {

data::DataOptions data_options(const Config& cfg) {
  data::DataOptions d;
  d.path = cfg.data.path;
  d.format = data::parse_data_format(cfg.data.format);
  d.template_kind = data::parse_template_kind(cfg.data.template_name);
  d.max_seq_len = cfg.data.max_seq_len;
  d.truncation = data::parse_truncation(cfg.data.truncation);
  d.on_bad_record = data::parse_on_bad_record(cfg.data.on_bad_record);
  if (!cfg.data.system_prompt.empty()) d.system_prompt = cfg.data.system_prompt;
  d.cache_dir = cfg.data.cache_dir;
  d.packing = cfg.data.packing;
  d.seed = static_cast<uint64_t>(cfg.run.seed);
  d.micro_batch_size = cfg.train.micro_batch_size;
  return d;
}

model::LlamaConfig preset_shape(const Config& cfg) {
  model::LlamaConfig c = model::LlamaConfig::preset(cfg.model.preset);
  auto set = [](int64_t& field, int64_t v) {
    if (v > 0) field = v;
  };
  set(c.hidden_size, cfg.model.hidden_size);
  set(c.intermediate_size, cfg.model.intermediate_size);
  set(c.num_hidden_layers, cfg.model.num_layers);
  set(c.num_attention_heads, cfg.model.num_heads);
  set(c.num_key_value_heads, cfg.model.num_kv_heads);
  set(c.vocab_size, cfg.model.vocab_size);
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

grouping::GroupingOptions grouping_options(const Config& cfg) {
  grouping::GroupingOptions g;
  g.function = cfg.grouping.function;
  g.top_k_percent = cfg.grouping.top_k_percent;
  g.selection = cfg.grouping.selection;
  g.seed = static_cast<uint64_t>(cfg.run.seed);
  g.params = cfg.grouping.options;  // each function's own keys, read back by the function
  g.cache_dir = cfg.data.cache_dir;
  g.num_threads = static_cast<int>(cfg.train.num_threads);
  return g;
}

double LambdaSchedule::at(int64_t step, int64_t total_steps) const {
  return decay ? loss::lambda_linear_decay(lambda_max, lambda_min, step, total_steps) : loss::lambda_static(lambda);
}

LambdaSchedule lambda_schedule(const Config& cfg) {
  const std::string& name = cfg.loss.lambda_schedule;
  SFTGO_CHECK_HINT(name == "static" || name == "linear_decay", ErrorKind::kConfig, "use static or linear_decay",
                   "unknown loss.lambda_schedule '", name, "'");
  return {name == "linear_decay", cfg.loss.lambda, cfg.loss.lambda_max, cfg.loss.lambda_min};
}

}  // namespace sftgo::train
