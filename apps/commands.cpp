#include "commands.h"

#include <torch/version.h>

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

#include "sftgo/checkpoint/run_dir.h"
#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/version.h"
#include "sftgo/dist/dist.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/model/config.h"
#include "sftgo/optim/rule.h"
#include "sftgo/train/precision.h"
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
  register_track_command(app, selected);
  register_plan_command(app, selected);
}

const char* libtorch_version() { return TORCH_VERSION; }

void validate_run_config(const LoadedConfig& loaded) {
  const Config& cfg = loaded.config;
  grouping::check_grouping_function_name(cfg.grouping.function);
  train::make_precision_policy(cfg.train.precision);  // a registered precision policy
  optim::check_update_rule(cfg.optim, zero_stage(cfg.dist) > 0);  // a registered rule, and one ZeRO can shard
  if (!cfg.model.path.empty()) {
    // A checkpoint that is not there is reported where it is loaded, naming the file.
    const std::filesystem::path json = std::filesystem::path(cfg.model.path) / "config.json";
    if (!std::filesystem::is_regular_file(json)) return;
    model::ShapeRequest want;
    const auto preset = loaded.origins.find("model.preset");
    if (cfg.model.preset == "auto" || (preset != loaded.origins.end() && preset->second.source != "default"))
      want.preset = cfg.model.preset;
    want.hidden_size = cfg.model.hidden_size;
    want.intermediate_size = cfg.model.intermediate_size;
    want.num_layers = cfg.model.num_layers;
    want.num_heads = cfg.model.num_heads;
    want.num_kv_heads = cfg.model.num_kv_heads;
    want.vocab_size = cfg.model.vocab_size;
    model::check_checkpoint_shape(model::LlamaConfig::from_file(json.string()), cfg.model.path, want);
  } else if (cfg.lora.enabled && is_rank0()) {
    log_warn("lora.enabled but no model.path: the adapters train on a randomly initialised base model ({}), "
             "which tests the code but learns nothing useful; set model.path to a pretrained checkpoint",
             cfg.model.preset);
  }
}

namespace {

// Until training starts there is nothing to save, so a stop signal during set-up ends the process at
// once with one line. Under mpirun this is also how a rank learns that another one failed: mpirun
// sends it SIGTERM, and without this it announced a checkpoint save it would never make and printed
// LibTorch's rendezvous backtraces while its connection to the failed rank 0 was cut.
char g_setup_stop_line[200];
size_t g_setup_stop_len = 0;

void on_setup_signal(int sig) {
  (void)!::write(2, g_setup_stop_line, g_setup_stop_len);
  std::_Exit(128 + sig);
}

void install_setup_signal_handlers(int rank, int world) {
  const int n = world > 1 ? std::snprintf(g_setup_stop_line, sizeof g_setup_stop_line,
                                          "sftgo-train: rank %d: stopping before training started (signal from "
                                          "the launcher: another rank failed or the job was stopped)\n",
                                          rank)
                          : std::snprintf(g_setup_stop_line, sizeof g_setup_stop_line,
                                          "sftgo-train: stopped before training started; nothing to save\n");
  g_setup_stop_len = n > 0 ? std::min(static_cast<size_t>(n), sizeof g_setup_stop_line - 1) : 0;
  struct sigaction sa {};
  sa.sa_handler = on_setup_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

}  // namespace

int run_train(const TrainArgs& args) {
  LoadedConfig loaded = load_config(args.config_path, args.overrides);
  const Config& cfg = loaded.config;
  // The rank is known before anything is printed: the config table and other info lines come from
  // rank 0 only, and every warning or error names its rank (docs/operations.md).
  const auto launch = dist::detect_launch(cfg.dist.master_addr, static_cast<int>(cfg.dist.master_port));
  init_logging(launch.rank, launch.world_size,
               parse_log_level(args.log_level != "info" ? args.log_level : cfg.run.log_level));
  install_setup_signal_handlers(launch.rank, launch.world_size);
  log_info("sftgo-train {} (git {}), config {}:\n{}", version_string(), git_hash(), loaded.source_path,
           config_table(loaded));
  validate_run_config(loaded);
  // Before anything is read or written: an unwritable directory is reported once, naming its key.
  // Only the process that writes the run files (rank 0) guards the run directory: it holds the lock
  // for the whole run, and a new run does not mix with another one already there (docs/operations.md).
  std::optional<checkpoint::RunDirLock> lock;
  if (launch.rank == 0) {
    ensure_writable_directory(cfg.run.output_dir, "run.output_dir");
    lock.emplace(cfg.run.output_dir);
    if (args.resume.empty()) checkpoint::prepare_fresh_run(cfg.run.output_dir, args.overwrite);
  }
  if (!cfg.data.cache_dir.empty()) ensure_writable_directory(cfg.data.cache_dir, "data.cache_dir");
  train::Trainer trainer(std::move(loaded));
  train::install_stop_signal_handlers();  // from here a signal finishes the step and saves
  train::TrainResult r = trainer.run(args.resume);
  if (r.interrupted) {
    log_info("stopped early by a signal (exit code {}); checkpoint {}", kExitStopped, r.last_checkpoint);
    return kExitStopped;
  }
  return kExitOk;
}

CLI::Validator key_value_override() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const auto eq = text.find('=');
        if (eq == std::string::npos || eq == 0) return "expected section.key=value, got '" + text + "'";
        return "";
      },
      "KEY=VALUE");
}

CLI::Validator non_empty_value() {
  return CLI::Validator([](std::string& text) -> std::string { return text.empty() ? "must not be empty" : ""; },
                        "NON-EMPTY");
}

}  // namespace sftgo::apps
