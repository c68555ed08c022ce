#include "commands.h"

#include <torch/version.h>

#include <iostream>

#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/version.h"
#include "sftgo/train/trainer.h"

namespace sftgo::apps {

void register_commands(CLI::App& app, std::function<int()>& selected) {
  register_config_command(app, selected);
  register_tokenize_command(app, selected);
  register_data_command(app, selected);
  register_groups_command(app, selected);
  register_plot_command(app, selected);
  register_score_command(app, selected);
  register_generate_command(app, selected);
  register_eval_command(app, selected);
}

const char* libtorch_version() { return TORCH_VERSION; }

int run_train(const TrainArgs& args) {
  LoadedConfig loaded = load_config(args.config_path, args.overrides);
  if (args.log_level == "info" && loaded.config.run.log_level != "info")
    init_logging(0, 1, parse_log_level(loaded.config.run.log_level));
  log_info("sftgo-train {} (git {}), config {}:\n{}", version_string(), git_hash(), loaded.source_path,
           config_table(loaded));
  train::install_stop_signal_handlers();
  train::Trainer trainer(std::move(loaded));
  train::TrainResult r = trainer.run(args.resume);
  if (r.interrupted) log_info("interrupted; checkpoint {}", r.last_checkpoint);
  return 0;
}

}  // namespace sftgo::apps
