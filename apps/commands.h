// The subcommands of sftgo-train. Each cmd_*.cpp maps command-line options onto one module's API;
// the app holds no logic of its own beyond that wiring.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace sftgo::apps {

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string resume;
  std::string log_level = "info";
};

// Adds every subcommand to `app`; the one the user picks stores its runner in `selected`.
void register_commands(CLI::App& app, std::function<int()>& selected);

// The default job: train from a config.
int run_train(const TrainArgs& args);

const char* libtorch_version();

// Per-subcommand registration, one file each.
void register_config_command(CLI::App& app, std::function<int()>& selected);
void register_tokenize_command(CLI::App& app, std::function<int()>& selected);
void register_data_command(CLI::App& app, std::function<int()>& selected);
void register_groups_command(CLI::App& app, std::function<int()>& selected);
void register_plot_command(CLI::App& app, std::function<int()>& selected);
void register_score_command(CLI::App& app, std::function<int()>& selected);
void register_generate_command(CLI::App& app, std::function<int()>& selected);
void register_eval_command(CLI::App& app, std::function<int()>& selected);

}  // namespace sftgo::apps
