#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {
namespace {

// Runs `fn`, expects an sftgo::Error of kind kConfig, and returns its full text.
template <typename Fn>
std::string config_error(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a config error";
  return "";
}

TEST(Config, DefaultsAreValid) {
  LoadedConfig c = load_config("");
  EXPECT_EQ(c.config.loss.scope, "step");
  EXPECT_EQ(c.origins.at("optim.lr").source, "default");
}

TEST(Config, ReadsTypedValuesAndRecordsOrigins) {
  const char* yaml =
      "run:\n  name: t\n  seed: 7\n"
      "optim:\n  lr: 2e-5\n  weight_decay: 0.1\n"
      "data:\n  template: alpaca\n  packing: true\n"
      "train:\n  max_steps: 1e3\n";
  LoadedConfig c = load_config_text(yaml, "t.yaml");
  EXPECT_EQ(c.config.run.seed, 7);
  EXPECT_DOUBLE_EQ(c.config.optim.lr, 2e-5);
  EXPECT_EQ(c.config.data.template_name, "alpaca");
  EXPECT_TRUE(c.config.data.packing);
  EXPECT_EQ(c.config.train.max_steps, 1000);
  EXPECT_EQ(c.origins.at("optim.lr").source, "t.yaml:5");
  EXPECT_EQ(c.origins.at("run.seed").source, "t.yaml:3");
}

TEST(Config, UnknownKeyNamesFileLineAndSuggestion) {
  std::string msg = config_error([] { load_config_text("optim:\n  lr: 1e-5\n  lr_rate: 2\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("optim.lr_rate"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'optim.lr'"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("optimizer:\n  lr: 1\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:1"), std::string::npos) << msg;
}

// Issue 24: "optim.learning_rate" suggested optim.warmup_ratio (nearest spelling). Suggestions now come
// from the names other trainers use, then the same name in another section, then shared words.
TEST(Config, UnknownKeySuggestsFromOtherTrainersNamesAndWords) {
  const std::pair<const char*, const char*> cases[] = {
      {"optim.learning_rate", "optim.lr"},
      {"learning_rate", "optim.lr"},
      {"train.learning_rate", "optim.lr"},
      {"optim.lr_scheduler_type", "optim.schedule"},
      {"optim.lr_scheduler", "optim.schedule"},
      {"train.per_device_train_batch_size", "train.micro_batch_size"},
      {"train.gradient_accumulation_steps", "train.global_batch_size"},
      {"train.batch_size", "train.global_batch_size"},
      {"train.num_train_epochs", "train.epochs"},
      {"train.num_epochs", "train.epochs"},
      {"data.max_seq_length", "data.max_seq_len"},
      {"train.max_seq_length", "data.max_seq_len"},
      {"data.max_length", "data.max_seq_len"},
      {"data.cutoff_len", "data.max_seq_len"},
      {"optim.warmup_steps_count", "optim.warmup_steps"},  // shared words
      {"train.warmup_steps", "optim.warmup_steps"},       // same name, other section
      {"train.weight_decay", "optim.weight_decay"},
      {"optim.max_grad_norm", "optim.grad_clip"},
      {"optim.adam_beta1", "optim.beta1"},
      {"optim.adam_epsilon", "optim.eps"},
      {"train.logging_steps", "train.log_every"},
      {"train.save_steps", "train.save_every"},
      {"train.save_total_limit", "train.keep_last"},
      {"train.bf16", "train.precision"},
      {"model.gradient_checkpointing", "model.activation_checkpointing"},
      {"model.model_name_or_path", "model.path"},
      {"model.num_hidden_layers", "model.num_layers"},
      {"model.num_attention_heads", "model.num_heads"},
      {"model.num_key_value_heads", "model.num_kv_heads"},
      {"lora.lora_r", "lora.rank"},
      {"lora.r", "lora.rank"},
      {"lora.lora_alpha", "lora.alpha"},
      {"data.dataset", "data.path"},
      {"run.output-dir", "run.output_dir"},
      {"optim.lr_rate", "optim.lr"},              // shared word "lr"
      {"optim.weight_decya", "optim.weight_decay"},  // a typo: nearest spelling
      {"train.save_evry", "train.save_every"},
  };
  for (const auto& [given, expected] : cases) {
    SCOPED_TRACE(given);
    const std::string msg = config_error([&] { load_config("", {std::string(given) + "=1"}); });
    EXPECT_NE(msg.find(std::string("unknown config key '") + given + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("did you mean '") + expected + "'"), std::string::npos) << msg;
  }
  // The same from a YAML file, with its line.
  const std::string msg = config_error([] { load_config_text("optim:\n  learning_rate: 1e-4\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:2: unknown config key 'optim.learning_rate' (hint: did you mean 'optim.lr'?)"),
            std::string::npos)
      << msg;
  // Accumulation has no key of its own: the hint says how the global batch covers it.
  const std::string acc = config_error([] { load_config("", {"gradient_accumulation_steps=4"}); });
  EXPECT_NE(acc.find("micro_batch_size x ranks"), std::string::npos) << acc;
  // A name several sections share lists them all; nothing close gives the generic hint.
  const std::string path = config_error([] { load_config("", {"optim.path=x"}); });
  EXPECT_NE(path.find("'tokenizer.path' or 'model.path' or 'data.path'"), std::string::npos) << path;
  const std::string none = config_error([] { load_config("", {"optim.zzzzqqqq=1"}); });
  EXPECT_NE(none.find("see docs/config.md"), std::string::npos) << none;
}

TEST(Config, TypeAndRangeErrors) {
  std::string msg = config_error([] { load_config_text("train:\n  epochs: three\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected a number"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("train:\n  micro_batch_size: 2.5\n", "c.yaml"); });
  EXPECT_NE(msg.find("expected an integer"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("loss:\n  lambda: 1.5\n", "c.yaml"); });
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("model:\n  dtype: bf16\n", "c.yaml"); });
  EXPECT_NE(msg.find("not one of"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("data:\n  packing: maybe\n", "c.yaml"); });
  EXPECT_NE(msg.find("true or false"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("optim: [1, 2]\n", "c.yaml"); });
  EXPECT_NE(msg.find("section"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("optim:\n  lr: [1, 2]\n", "c.yaml"); });
  EXPECT_NE(msg.find("got a list"), std::string::npos) << msg;
}

TEST(Config, MalformedYamlNamesLine) {
  std::string msg = config_error([] { load_config_text("run:\n  name: [unclosed\n", "bad.yaml"); });
  EXPECT_NE(msg.find("bad.yaml:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid YAML"), std::string::npos) << msg;
}

TEST(Config, OverridesApplyInOrderAndAreChecked) {
  LoadedConfig c =
      load_config_text("optim:\n  lr: 1e-5\n", "c.yaml", {"optim.lr=3e-4", "data.packing=true", "run.name=x=y"});
  EXPECT_DOUBLE_EQ(c.config.optim.lr, 3e-4);
  EXPECT_TRUE(c.config.data.packing);
  EXPECT_EQ(c.config.run.name, "x=y");
  EXPECT_EQ(c.origins.at("optim.lr").source, "--set");
  std::string msg = config_error([] { load_config_text("", "c.yaml", {"optim.lrr=1"}); });
  EXPECT_NE(msg.find("did you mean 'optim.lr'"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("", "c.yaml", {"optim.lr"}); });
  EXPECT_NE(msg.find("key=value"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("", "c.yaml", {"optim.lr=-1"}); });
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

TEST(Config, CrossFieldValidation) {
  config_error([] { load_config_text("loss:\n  lambda_min: 0.9\n  lambda_max: 0.1\n", "c.yaml"); });
  config_error([] { load_config_text("train:\n  global_batch_size: 10\n  micro_batch_size: 4\n", "c.yaml"); });
  config_error([] { load_config_text("grouping:\n  function: none\nloss:\n  objective: sftgo\n", "c.yaml"); });
}

// The trainer's set-up checks that need only the config also fail `sftgo-train config` (issue 24).
TEST(Config, TrainerChecksRunAtLoad) {
  std::string msg = config_error(
      [] { load_config("", {"train.precision=bf16_autocast", "model.dtype=bfloat16"}); });
  EXPECT_NE(msg.find("bf16_autocast keeps fp32 weights"), std::string::npos) << msg;
  msg = config_error([] { load_config("", {"train.eval_every=10"}); });
  EXPECT_NE(msg.find("data.eval_path is empty"), std::string::npos) << msg;
  EXPECT_NO_THROW(load_config("", {"train.eval_every=10", "data.eval_path=x.jsonl"}));
}

// The resume warning lists each changed key with both values; bookkeeping keys and keys the saved
// config predates are left out (issue 24).
TEST(Config, ChangesAgainstASavedConfig) {
  const LoadedConfig saved = load_config("", {"optim.lr=2e-5", "train.max_steps=4", "run.name=a"});
  const std::string yaml = config_to_yaml(saved.config);
  EXPECT_TRUE(config_changes(yaml, saved.config).empty());
  const LoadedConfig now = load_config("", {"optim.lr=3e-5", "train.max_steps=8", "run.name=b",
                                            "train.log_every=5", "train.save_every=2", "data.cache_dir=/tmp/c"});
  EXPECT_EQ(config_changes(yaml, now.config),
            (std::vector<std::string>{"run.name: \"a\" -> \"b\"", "optim.lr: 2e-05 -> 3e-05",
                                      "train.max_steps: 4 -> 8"}));
  // A key added to sftgo after the checkpoint was saved is not a change.
  std::string older = yaml;
  const auto at = older.find("  lambda_min:");
  older.erase(at, older.find('\n', at) - at + 1);
  EXPECT_TRUE(config_changes(older, saved.config).empty()) << older;
  EXPECT_EQ(config_changes("- not a mapping", now.config).size(), 1u);
}

TEST(Config, YamlRoundTrip) {
  LoadedConfig a = load_config_text("optim:\n  lr: 0.1\n  eps: 1e-9\nrun:\n  name: 'a: b'\n", "c.yaml");
  std::string yaml = config_to_yaml(a.config);
  LoadedConfig b = load_config_text(yaml, "resolved.yaml");
  EXPECT_EQ(config_to_yaml(b.config), yaml);
  EXPECT_DOUBLE_EQ(b.config.optim.eps, 1e-9);
  EXPECT_EQ(b.config.run.name, "a: b");
  std::string table = config_table(a);
  EXPECT_NE(table.find("optim.lr"), std::string::npos);
  EXPECT_NE(table.find("c.yaml:2"), std::string::npos);
}

// Issue 28 spells logging.report_to as a YAML list; the comma form and --set with either form load
// the same value, resolved_config.yaml writes the list form back, and a nested value is refused.
TEST(Config, ListKeysTakeYamlListsOrCommas) {
  LoadedConfig a = load_config_text("logging:\n  report_to: [tensorboard, wandb]\n", "c.yaml");
  EXPECT_EQ(a.config.logging.report_to, "tensorboard,wandb");
  LoadedConfig b = load_config_text("logging:\n  report_to:\n    - mlflow\n", "c.yaml");
  EXPECT_EQ(b.config.logging.report_to, "mlflow");
  LoadedConfig c = load_config_text("", "c.yaml", {"logging.report_to=[wandb,mlflow]"});
  EXPECT_EQ(c.config.logging.report_to, "wandb,mlflow");
  LoadedConfig d = load_config_text("", "c.yaml", {"logging.report_to=tensorboard,mlflow"});
  EXPECT_EQ(d.config.logging.report_to, "tensorboard,mlflow");
  const std::string yaml = config_to_yaml(a.config);
  EXPECT_NE(yaml.find("report_to: [tensorboard, wandb]"), std::string::npos) << yaml;
  EXPECT_EQ(load_config_text(yaml, "resolved.yaml").config.logging.report_to, "tensorboard,wandb");
  std::string msg = config_error([] { load_config_text("logging:\n  report_to: [[wandb]]\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:2: logging.report_to: expected a list of names, got a nested list"), std::string::npos)
      << msg;
  msg = config_error([] { load_config_text("logging:\n  report_to: [tensorboard, comet]\n", "c.yaml"); });
  EXPECT_NE(msg.find("unknown tracker 'comet'"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("run:\n  name: [a, b]\n", "c.yaml"); });
  EXPECT_NE(msg.find("run.name: expected a string value, got a list"), std::string::npos) << msg;
}

TEST(Config, FileErrorsNameThePath) {
  try {
    load_config("/nonexistent/x.yaml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.yaml"), std::string::npos);
  }
}

// yaml-cpp keeps repeated keys and YAML::Load reads only the first document; each of these once
// loaded silently with one of the values.
TEST(Config, RepeatedKeysSectionsAndDocumentsAreErrors) {
  std::string msg = config_error([] { load_config_text("optim:\n  lr: 3e-3\n  lr: 1.0\n", "d.yaml"); });
  EXPECT_NE(msg.find("d.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'optim.lr' is given twice (first at d.yaml:2)"), std::string::npos) << msg;
  msg = config_error(
      [] { load_config_text("optim:\n  lr: 3e-3\ntrain:\n  epochs: 1\noptim:\n  beta1: 0.5\n", "s.yaml"); });
  EXPECT_NE(msg.find("s.yaml:5: 'optim' is given twice (first at s.yaml:1)"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("optim:\n  lr: 3e-3\n---\noptim:\n  lr: 1.0\n", "m.yaml"); });
  EXPECT_NE(msg.find("m.yaml:3: a second YAML document"), std::string::npos) << msg;
  // A stray ',' made yaml-cpp's LoadAll loop forever allocating (fuzz/fuzz_config.cpp found it), and
  // YAML::Load took it for an empty config.
  msg = config_error([] { load_config_text(",", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:1: invalid YAML"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("optim:\n  lr: 0.5\n---\n,\n", "c.yaml"); });
  EXPECT_NE(msg.find("c.yaml:3"), std::string::npos) << msg;
  // A document start marker before the one document is fine, and --set may repeat a key (in order).
  EXPECT_DOUBLE_EQ(load_config_text("---\noptim:\n  lr: 0.5\n", "ok.yaml").config.optim.lr, 0.5);
  EXPECT_DOUBLE_EQ(load_config_text("", "ok.yaml", {"optim.lr=0.1", "optim.lr=0.2"}).config.optim.lr, 0.2);
}

// Integers are bounded by what a run can honour; each of these was accepted and misbehaved.
TEST(Config, IntegersAreBoundedToWhatARunCanHonour) {
  std::string msg = config_error([] { load_config_text("train:\n  global_batch_size: 2147483648\n", "b.yaml"); });
  EXPECT_NE(msg.find("b.yaml:2: train.global_batch_size = 2147483648 is out of range (expected in [1, 1048576])"),
            std::string::npos)
      << msg;
  msg = config_error([] { load_config_text("train:\n  epochs: 1e300\n", "e.yaml"); });
  EXPECT_NE(msg.find("e.yaml:2: train.epochs = 1e300 is out of range"), std::string::npos) << msg;
  msg = config_error([] { load_config_text("train:\n  max_steps: 0\n", "m.yaml"); });
  EXPECT_NE(msg.find("m.yaml:2: train.max_steps = 0 is out of range (expected -1, or in [1, 1000000000])"),
            std::string::npos)
      << msg;
  msg = config_error([] { load_config_text("", "x.yaml", {"model.hidden_size=0"}); });
  EXPECT_NE(msg.find("model.hidden_size = 0 is out of range (expected -1, or in [1, 1048576])"), std::string::npos)
      << msg;
  config_error([] { load_config_text("", "x.yaml", {"train.num_threads=4294967296"}); });
  config_error([] { load_config_text("", "x.yaml", {"model.vocab_size=2147483648"}); });
  config_error([] { load_config_text("", "x.yaml", {"optim.warmup_steps=-2"}); });
  // The sentinels and the bounds themselves still load.
  LoadedConfig c = load_config_text(
      "train:\n  max_steps: -1\n  epochs: 1e6\n  global_batch_size: 1048576\n"
      "model:\n  hidden_size: -1\n  vocab_size: 2147483647\n",
      "ok.yaml");
  EXPECT_EQ(c.config.train.max_steps, -1);
  EXPECT_EQ(c.config.model.vocab_size, 2147483647);
}

// docs/config.md and the shipped configs need every grouping function's keys, which the grouping
// module declares: their tests are in tests/grouping/test_options.cpp.

// Keys another module declares (config/options.h) load, check, print and document like the config
// module's own ones, after the section's own keys; the toy owner stands for a grouping function.
TEST(ConfigOptions, DeclaredKeysLoadCheckPrintAndDocument) {
  declare_options({"grouping", "toy_cfg",
                   {OptionSpec("toy_cfg_width", int64_t{4}, "Toy: a width").range(1, 8),
                    OptionSpec("toy_cfg_mode", "fast", "Toy: a mode").one_of({"fast", "slow"}),
                    {"toy_cfg_on", false, "Toy: a switch"}}});
  LoadedConfig c = load_config_text("grouping:\n  toy_cfg_width: 6\n  toy_cfg_on: true\n", "toy.yaml");
  EXPECT_EQ(c.config.grouping.options.get<int64_t>("toy_cfg_width"), 6);
  EXPECT_EQ(c.config.grouping.options.get<std::string>("toy_cfg_mode"), "fast");  // the declared default
  EXPECT_TRUE(c.config.grouping.options.get<bool>("toy_cfg_on"));
  EXPECT_EQ(c.origins.at("grouping.toy_cfg_width").source, "toy.yaml:2");
  // --set, the range and the allowed values are checked as for any key.
  EXPECT_EQ(load_config("", {"grouping.toy_cfg_mode=slow"}).config.grouping.options.get<std::string>("toy_cfg_mode"),
            "slow");
  EXPECT_NE(config_error([] { load_config_text("grouping:\n  toy_cfg_width: 9\n", "t.yaml"); })
                .find("t.yaml:2: grouping.toy_cfg_width = 9 is out of range (expected in [1, 8])"),
            std::string::npos);
  EXPECT_NE(config_error([] { load_config("", {"grouping.toy_cfg_mode=slwo"}); }).find("did you mean 'slow'"),
            std::string::npos);
  EXPECT_NE(config_error([] { load_config_text("grouping:\n  toy_cfg_widht: 2\n", "t.yaml"); })
                .find("did you mean 'grouping.toy_cfg_width'"),
            std::string::npos);
  // YAML output loads back; the table, the key list and the reference name the keys.
  const std::string yaml = config_to_yaml(c.config);
  EXPECT_NE(yaml.find("toy_cfg_width: 6"), std::string::npos) << yaml;
  EXPECT_EQ(load_config_text(yaml, "r.yaml").config.grouping.options.get<int64_t>("toy_cfg_width"), 6);
  EXPECT_NE(config_table(c).find("grouping.toy_cfg_on"), std::string::npos);
  const auto keys = config_keys();
  const auto width = std::find(keys.begin(), keys.end(), "grouping.toy_cfg_width");
  ASSERT_NE(width, keys.end());
  EXPECT_LT(std::find(keys.begin(), keys.end(), "grouping.selection"), width);  // after the section's own keys
  EXPECT_LT(width, std::find(keys.begin(), keys.end(), "loss.objective"));
  EXPECT_NE(config_reference_markdown().find("| `grouping.toy_cfg_width` | int | `4` | [1, 8] | Toy: a width |"),
            std::string::npos);
  // In declaration order.
  const std::vector<std::string> changes = {"grouping.toy_cfg_width: 6 -> 4", "grouping.toy_cfg_on: true -> false"};
  EXPECT_EQ(config_changes(yaml, load_config("").config), changes);
  // A declared key may not shadow a key of the section or of another owner; re-declaring replaces.
  EXPECT_THROW(declare_options({"grouping", "toy_bad", {{"selection", "x", "clash"}}}), Error);
  EXPECT_THROW(declare_options({"grouping", "toy_bad", {{"toy_cfg_on", true, "clash"}}}), Error);
  EXPECT_NO_THROW(declare_options({"grouping", "toy_cfg", {{"toy_cfg_on", false, "Toy: a switch"}}}));
  EXPECT_NE(config_error([] { load_config_text("grouping:\n  toy_cfg_width: 2\n", "t.yaml"); })
                .find("t.yaml:2: unknown config key 'grouping.toy_cfg_width'"),
            std::string::npos);
  declare_options({"grouping", "toy_cfg", {}});
}

// What a module does with values given in code (not through YAML): defaults filled in, values checked.
TEST(ConfigOptions, WithDefaultsFillsAndChecks) {
  const std::vector<OptionSpec> specs = {OptionSpec("w", int64_t{4}, "w").range(1, 8), {"name", "a", "n"}};
  OptionValues given;
  given.set("w", int64_t{2});
  const OptionValues full = with_defaults("grouping", specs, given, "toy");
  EXPECT_EQ(full.get<int64_t>("w"), 2);
  EXPECT_EQ(full.get<std::string>("name"), "a");
  given.set("w", int64_t{0});
  EXPECT_NE(config_error([&] { with_defaults("grouping", specs, given, "toy"); })
                .find("toy options: grouping.w = 0 is out of range"),
            std::string::npos);
  given.set("w", 2.0);
  EXPECT_NE(config_error([&] { with_defaults("grouping", specs, given, "toy"); }).find("grouping.w: expected an int value, got a float"),
            std::string::npos);
}

}  // namespace
}  // namespace sftgo
