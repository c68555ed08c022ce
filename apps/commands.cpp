#include "commands.h"

#include <torch/version.h>

#include <iostream>
#include <optional>

#include "sftgo/checkpoint/run_dir.h"
#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/version.h"
#include "sftgo/dist/dist.h"
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
  register_lora_merge_command(app, selected);
}

const char* libtorch_version() { return TORCH_VERSION; }

int run_train(const TrainArgs& args) {
  LoadedConfig loaded = load_config(args.config_path, args.overrides);
  if (args.log_level == "info" && loaded.config.run.log_level != "info")
    init_logging(0, 1, parse_log_level(loaded.config.run.log_level));
  log_info("sftgo-train {} (git {}), config {}:\n{}", version_string(), git_hash(), loaded.source_path,
           config_table(loaded));
  const Config& cfg = loaded.config;
  // Before anything is read or written: an unwritable directory is reported once, naming its key.
  // Only the process that writes the run files (rank 0) guards the run directory: it holds the lock
  // for the whole run, and a new run does not mix with another one already there (docs/operations.md).
  std::optional<checkpoint::RunDirLock> lock;
  if (dist::detect_launch(cfg.dist.master_addr, static_cast<int>(cfg.dist.master_port)).rank == 0) {
    ensure_writable_directory(cfg.run.output_dir, "run.output_dir");
    lock.emplace(cfg.run.output_dir);
    if (args.resume.empty()) checkpoint::prepare_fresh_run(cfg.run.output_dir, args.overwrite);
  }
  if (!cfg.data.cache_dir.empty()) ensure_writable_directory(cfg.data.cache_dir, "data.cache_dir");
  train::install_stop_signal_handlers();
  train::Trainer trainer(std::move(loaded));
  train::TrainResult r = trainer.run(args.resume);
  if (r.interrupted) {
    log_info("stopped early by a signal (exit code {}); checkpoint {}", kExitStopped, r.last_checkpoint);
    return kExitStopped;
  }
  return kExitOk;
}

}  // namespace sftgo::apps
