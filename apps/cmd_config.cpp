// `sftgo-train config`: load, validate and print a config; or print the config reference.
#include <iostream>

#include "commands.h"
#include "sftgo/config/config.h"
#include "sftgo/core/strings.h"

namespace sftgo::apps {

void register_config_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::string path;
    std::vector<std::string> overrides;
    bool yaml = false;
    bool reference = false;
    std::string write;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("config", "Validate a config and print it as a table (or YAML, or the key reference)");
  sub->add_option("--config,-c,path", args->path, "Config file (YAML); none = all defaults");
  sub->add_option("--set", args->overrides, "Override a key: --set optim.lr=2e-5 (repeatable)")
      ->check(key_value_override());
  sub->add_flag("--yaml", args->yaml, "Print the resolved config as YAML instead of a table");
  sub->add_flag("--reference", args->reference, "Print the Markdown reference of every key (docs/config.md)");
  sub->add_option("--write", args->write, "Also write the resolved YAML to this file (atomically)");
  sub->final_callback([args, &selected] {
    selected = [args] {
      if (args->reference) {
        std::cout << config_reference_markdown();
        return 0;
      }
      LoadedConfig loaded = load_config(args->path, args->overrides);
      validate_run_config(loaded);  // what training would refuse, `config` refuses too
      std::string yaml = config_to_yaml(loaded.config);
      std::cout << (args->yaml ? yaml : config_table(loaded));
      if (!args->write.empty()) write_file_atomic(args->write, yaml);
      return 0;
    };
  });
}

}  // namespace sftgo::apps
