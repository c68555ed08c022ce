// `sftgo-train data` and `sftgo-train groups`: inspect what training will see.
#include <iostream>

#include "commands.h"
#include "sftgo/config/config.h"
#include "sftgo/data/cli.h"
#include "sftgo/grouping/cli.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"

namespace sftgo::apps {

namespace {
struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;
};
void add_config_options(CLI::App* sub, ConfigArgs& a) {
  sub->add_option("--config,-c", a.path, "Training config (YAML)")->required();
  sub->add_option("--set", a.overrides, "Override a config key: --set data.max_seq_len=2048 (repeatable)")
      ->check(key_value_override());
}
}  // namespace

void register_data_command(CLI::App& app, std::function<int()>& selected) {
  struct Args : ConfigArgs {
    int dump = 0;
    std::string convert;
  };
  auto args = std::make_shared<Args>();
  auto* sub =
      app.add_subcommand("data", "Prepare the config's dataset and print counts, a length histogram and examples");
  add_config_options(sub, *args);
  auto* dump = sub->add_option("--dump", args->dump, "Show the first N examples with trained tokens marked")
                   ->check(CLI::NonNegativeNumber);
  sub->add_option("--convert", args->convert,
                  "Write data.path (any accepted format) as messages JSONL to this file (- = stdout) and exit; "
                  "no tokenizer needed")
      ->check(non_empty_value())
      ->excludes(dump);
  sub->final_callback([args, &selected] {
    selected = [args] {
      LoadedConfig loaded = load_config(args->path, args->overrides);
      if (!args->convert.empty())
        return data::run_data_convert(train::data_options(loaded.config), args->convert, std::cout, std::cerr);
      Tokenizer tok = Tokenizer::load(loaded.config.tokenizer.path);
      return data::run_data_cli(train::data_options(loaded.config), tok, args->dump, std::cout);
    };
  });
}

void register_groups_command(CLI::App& app, std::function<int()>& selected) {
  struct Args : ConfigArgs {
    int show = 3;
    std::string html;
    std::string jsonl;
  };
  auto args = std::make_shared<Args>();
  auto* sub =
      app.add_subcommand("groups", "Compute (and cache) the important-token groups and show examples highlighted");
  add_config_options(sub, *args);
  sub->add_option("--show", args->show, "Show the first N examples with important tokens highlighted")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--html", args->html, "Also write the highlighted examples to this HTML file");
  sub->add_option("--jsonl", args->jsonl,
                  "Also write every example's ids, tokens, trained flags, group and score per token as JSON lines");
  sub->final_callback([args, &selected] {
    selected = [args] {
      LoadedConfig loaded = load_config(args->path, args->overrides);
      Tokenizer tok = Tokenizer::load(loaded.config.tokenizer.path);
      data::PreparedDataset ds = data::prepare_dataset(train::data_options(loaded.config), tok);
      return grouping::run_groups_cli(ds.examples, tok, train::grouping_options(loaded.config), args->show, args->html,
                                      std::cout, args->jsonl);
    };
  });
}

}  // namespace sftgo::apps
