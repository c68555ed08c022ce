// sftgo-train: one binary, subcommands per job. `sftgo-train --config FILE [--set k=v]...` trains.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <functional>
#include <string>
#include <vector>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/version.h"

namespace {

// Exit codes: 0 success, 1 a reported sftgo::Error, 2 bad command line, 3 unexpected failure.
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInternal = 3;

std::string version_text() {
  std::string s = "sftgo-train ";
  s += sftgo::version_string();
  s += " (git ";
  s += sftgo::git_hash();
  s += ")\nLibTorch ";
  s += sftgo::apps::libtorch_version();
  s += "\nCUDA kernels: ";
  s += sftgo::built_with_cuda() ? "on" : "off";
  s += "\nNCCL: ";
  s += sftgo::nccl_version();
  s += "\n";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sftgo-train: supervised fine-tuning of Llama-3 models with SFT-GO (group optimization)"};
  app.set_version_flag("--version", version_text());
  app.require_subcommand(0, 1);
  app.fallthrough(false);

  sftgo::apps::TrainArgs train;
  app.add_option("--config,-c", train.config_path, "Training config (YAML); see docs/config.md");
  app.add_option("--set", train.overrides, "Override a config key: --set optim.lr=2e-5 (repeatable)");
  app.add_option("--resume", train.resume, "Resume from a checkpoint directory, or 'auto' for the newest in run.output_dir");
  app.add_option("--log-level", train.log_level, "debug | info | warn | error")->default_val("info");

  // Each subcommand stores its runner here when it is the one given on the command line.
  std::function<int()> selected;
  sftgo::apps::register_commands(app, selected);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  try {
    sftgo::init_logging(0, 1, sftgo::parse_log_level(train.log_level));
    if (selected) return selected();
    if (train.config_path.empty()) {
      std::cerr << app.help();
      std::cerr << "\nerror: nothing to do: give --config FILE to train, or a subcommand\n";
      return kExitUsage;
    }
    return sftgo::apps::run_train(train);
  } catch (const sftgo::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    sftgo::log_debug("raised at {}", e.where());
    return e.kind() == sftgo::ErrorKind::kUsage ? kExitUsage : kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return kExitInternal;
  }
}
