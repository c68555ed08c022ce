// The Trainer: the one module that knows every component. It maps the config onto each module's
// options, builds tokenizer -> data -> groups -> model -> optimizer, runs the optimizer steps,
// writes metrics and checkpoints, and resumes exactly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/config/config.h"
#include "sftgo/train/metrics.h"

namespace sftgo::train {

struct TrainResult {
  int64_t steps = 0;          // optimizer steps completed (including resumed ones)
  int64_t skipped_steps = 0;  // non-finite steps skipped in this process
  double first_loss = 0;      // loss of the first step run by this process
  double last_loss = 0;
  std::string last_checkpoint;  // "" when none was written
  bool interrupted = false;     // stopped by SIGINT/SIGTERM (a checkpoint was saved)
};

struct TrainerHooks {
  // Called after every optimizer step (tests stop runs early or record metrics through it).
  // Returning false stops training after the step without a final save (simulates a kill).
  std::function<bool(const StepMetrics&)> on_step;
};

class Trainer {
 public:
  Trainer(LoadedConfig config, TrainerHooks hooks = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // resume: "" = fresh run, "auto" = newest checkpoint in run.output_dir (fresh when none), or a
  // checkpoint directory.
  TrainResult run(const std::string& resume = "");

  // All parameters as (HF name, tensor), for tests comparing runs.
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Installs SIGINT/SIGTERM/SIGUSR1 handlers that ask a running Trainer to save and stop after the current
// step (a second signal exits at once). Called by the app, not by tests.
void install_stop_signal_handlers();
bool stop_requested();
void request_stop();        // as if a signal arrived; usable from tests
void clear_stop_request();  // tests: forget an earlier request

}  // namespace sftgo::train
