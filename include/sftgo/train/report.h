// Experiment trackers (logging.report_to, docs/tracking.md). Rank 0 starts a follower process,
// scripts/sftgo_track.py, that tails metrics.jsonl and writes each line to TensorBoard, W&B and MLflow
// through their own clients. Training never waits on it while it runs and never depends on it: a
// follower that cannot start, fails or dies costs one warning, and metrics.jsonl stays the record.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "sftgo/config/config.h"

namespace sftgo::train {

// The tracker names of logging.report_to ("tensorboard, wandb" -> {tensorboard, wandb}); the config
// module has already refused unknown names.
std::vector<std::string> report_targets(const std::string& report_to);

// How the follower is started: which Python, which script, and the sftgo-train binary it calls to
// draw the group-loss plot. `python_setting` is logging.python. Empty script = not found (the binary
// does not sit in a checkout's build/bin).
struct FollowerCommand {
  std::string python;
  std::string script;
  std::string sftgo;
};
FollowerCommand follower_command(const std::string& python_setting);

// The follower of one training run. The trainer holds the write end of a pipe that is the follower's
// standard input; closing it (the destructor, or the process ending in any way) tells the follower
// that no more lines come, so it sends the rest, adds the artifacts and closes the tracker runs.
class TrackerFollower {
 public:
  // Starts the follower for cfg.run.output_dir when logging.report_to names a tracker; null when it
  // names none or the follower could not start (one warning). `fresh`: the run starts at step 0, so
  // the follower starts new tracker runs instead of continuing those in tracking.json.
  static std::unique_ptr<TrackerFollower> start(const Config& cfg, bool fresh);
  // Closes the pipe and waits for the follower at most kFinishWaitS seconds; past that it is left to
  // finish on its own. A follower that died or failed unexpectedly is reported in one warning.
  ~TrackerFollower();
  TrackerFollower(const TrackerFollower&) = delete;
  TrackerFollower& operator=(const TrackerFollower&) = delete;

  static constexpr double kFinishWaitS = 120;

 private:
  TrackerFollower(pid_t pid, int pipe_fd, std::string run_dir, std::string targets)
      : pid_(pid), pipe_fd_(pipe_fd), run_dir_(std::move(run_dir)), targets_(std::move(targets)) {}
  pid_t pid_;
  int pipe_fd_;
  std::string run_dir_;
  std::string targets_;  // "tensorboard,wandb", for the warning's `sftgo-train track` command
};

// `sftgo-train track RUN_DIR --to ...`: runs the follower once in the foreground over what the run's
// metrics.jsonl holds (a run that finished without trackers, or after a follower failed). Returns the
// follower's exit status (0 = every tracker took every line).
int track_run_dir(const std::string& run_dir, const std::vector<std::string>& targets, const std::string& python);

}  // namespace sftgo::train
