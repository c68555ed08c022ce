// `sftgo-train track RUN_DIR --to tensorboard,wandb,mlflow`: sends a run's metrics.jsonl to experiment
// trackers after the fact (a run trained without logging.report_to, or whose follower failed). Steps a
// tracker already holds (RUN_DIR/tracking.json) are not sent again (docs/tracking.md).
#include <filesystem>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/train/report.h"

namespace sftgo::apps {

namespace {

struct TrackArgs {
  std::string run_dir;
  std::vector<std::string> to;
  std::string python;
};

int run_track(const TrackArgs& a) {
  SFTGO_CHECK(std::filesystem::is_regular_file(std::filesystem::path(a.run_dir) / "metrics.jsonl"), ErrorKind::kIo,
              "track: ", a.run_dir, " holds no metrics.jsonl (expected a run directory)");
  const int code = train::track_run_dir(a.run_dir, a.to, a.python);
  return code == 0 ? kExitOk : kExitError;
}

}  // namespace

void register_track_command(CLI::App& app, std::function<int()>& selected) {
  auto args = std::make_shared<TrackArgs>();
  auto* sub = app.add_subcommand("track",
                                 "Send a run's metrics.jsonl to experiment trackers (TensorBoard, W&B, MLflow) "
                                 "after the fact; steps a tracker already has are skipped");
  sub->add_option("run_dir", args->run_dir, "Run directory holding metrics.jsonl")->required();
  sub->add_option("--to", args->to, "Trackers: tensorboard, wandb, mlflow (comma-separated or repeated)")
      ->required()
      ->delimiter(',')
      ->check(CLI::IsMember({"tensorboard", "wandb", "mlflow"}));
  sub->add_option("--python", args->python,
                  "Python with the trackers' clients (default: the repository's .venv/bin/python, else python3)")
      ->check(non_empty_value());
  sub->final_callback([args, &selected] { selected = [args] { return run_track(*args); }; });
}

}  // namespace sftgo::apps
