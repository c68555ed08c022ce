// sftgo-train: one binary, subcommands per job. `sftgo-train --config FILE [--set k=v]...` trains.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <functional>
#include <string>
#include <vector>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/version.h"

namespace {

using sftgo::apps::kExitError;
using sftgo::apps::kExitInternal;
using sftgo::apps::kExitUsage;

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

// "rank 1: " under a multi-process launch (known once training has read its config), else "".
std::string rank_prefix() {
  return sftgo::log_world_size() > 1 ? "rank " + std::to_string(sftgo::log_rank()) + ": " : "";
}

// LibTorch's exceptions carry a C++ backtrace after the message ("Exception raised from ...",
// "frame #0: ..."); it helps no user, so only the message is printed.
std::string without_backtrace(const char* what) {
  std::string s(what);
  for (const char* marker : {"\nException raised from ", "\nframe #"}) {
    const auto at = s.find(marker);
    if (at != std::string::npos) s.resize(at);
  }
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
  app.add_option("--set", train.overrides, "Override a config key: --set optim.lr=2e-5 (repeatable)")
      ->check(sftgo::apps::key_value_override());
  auto* resume =
      app.add_option("--resume", train.resume,
                     "Resume from a checkpoint directory, or 'auto' for the newest intact one in run.output_dir")
          ->check(CLI::Validator(  // "" would silently start a fresh run
              [](std::string& v) { return v.empty() ? std::string("empty: give a checkpoint directory or 'auto'") : ""; },
              "DIR|auto"));
  app.add_flag("--overwrite", train.overwrite,
               "Start a new run in a run.output_dir that holds another run, deleting its checkpoints and metrics")
      ->excludes(resume);
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
    std::fprintf(stderr, "error: %s%s\n", rank_prefix().c_str(), e.what());
    sftgo::log_debug("raised at {}", e.where());
    return e.kind() == sftgo::ErrorKind::kUsage ? kExitUsage : kExitError;
  } catch (const std::filesystem::filesystem_error& e) {
    // A backstop: the places that know the config key check their paths first (run.output_dir,
    // data.cache_dir, plot --out); anything else the OS refuses is still the user's path, not a bug.
    std::string paths = e.path1().string();
    if (!e.path2().empty()) paths += " -> " + e.path2().string();
    std::fprintf(stderr, "error: %s: %s (hint: check that the path exists and this user can write there)\n",
                 paths.empty() ? "filesystem" : paths.c_str(), e.code().message().c_str());
    return kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s%s\n", rank_prefix().c_str(), without_backtrace(e.what()).c_str());
    return kExitInternal;
  }
}
