// The subcommands of sftgo-train. Each cmd_*.cpp maps command-line options onto one module's API;
// the app holds no logic of its own beyond that wiring.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace sftgo {
struct LoadedConfig;
}

namespace sftgo::apps {

// Exit codes (docs/operations.md): 0 only for a complete job; 1 a reported error naming the file,
// line, key or tensor; 2 a bad command line; 3 an internal error (a bug: never reachable from input);
// 75 training stopped early by SIGINT/SIGTERM/SIGUSR1 after saving a checkpoint (EX_TEMPFAIL of
// sysexits.h: "try again later", i.e. --resume auto), so `train && eval` does not go on with a
// partial model.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInternal = 3;
constexpr int kExitStopped = 75;

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string resume;
  bool overwrite = false;  // a fresh run may replace the run already in run.output_dir
  std::string log_level = "info";
};

// Adds every subcommand to `app`; the one the user picks stores its runner in `selected`.
void register_commands(CLI::App& app, std::function<int()>& selected);

// The default job: train from a config.
int run_train(const TrainArgs& args);

// The checks of a loaded config that need more than the config module: grouping.function is
// registered, model.preset and the model.* shape overrides match model.path's config.json; warns
// about LoRA on a random base. Training and `sftgo-train config` both run it.
void validate_run_config(const LoadedConfig& loaded);

const char* libtorch_version();

// Command-line value checks shared by the subcommands (a failing one is exit 2, CLI11's message):
// `--set` must be KEY=VALUE with a non-empty key; a path option must not be the empty string
// ("--convert ''" was silently ignored).
CLI::Validator key_value_override();
CLI::Validator non_empty_value();

// Per-subcommand registration, one file each.
void register_config_command(CLI::App& app, std::function<int()>& selected);
void register_tokenize_command(CLI::App& app, std::function<int()>& selected);
void register_data_command(CLI::App& app, std::function<int()>& selected);
void register_groups_command(CLI::App& app, std::function<int()>& selected);
void register_plot_command(CLI::App& app, std::function<int()>& selected);
void register_score_command(CLI::App& app, std::function<int()>& selected);
void register_generate_command(CLI::App& app, std::function<int()>& selected);
void register_eval_command(CLI::App& app, std::function<int()>& selected);
void register_lora_merge_command(CLI::App& app, std::function<int()>& selected);
void register_track_command(CLI::App& app, std::function<int()>& selected);
void register_plan_command(CLI::App& app, std::function<int()>& selected);

}  // namespace sftgo::apps
