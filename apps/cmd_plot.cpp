// `sftgo-train plot RUN_DIR [RUN_DIR ...]`: group-loss curves from metrics.jsonl to an SVG
// (RUN_DIR/group_losses.svg for one run). scripts/plot_runs.py draws the same figure as PNG + SVG.
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/plot.h"

namespace sftgo::apps {

void register_plot_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::vector<std::string> run_dirs;
    std::string out;
    double smooth = 0.6;
    bool objective = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "plot",
      "Plot runs' group losses (L_CE, L_imp, L_unimp; training and held-out) to an SVG, several runs on one figure");
  sub->add_option("run_dirs", args->run_dirs, "Run directories holding metrics.jsonl (one dash pattern each)")
      ->required();
  sub->add_option("--out,-o", args->out, "Output SVG (default RUN_DIR/group_losses.svg; required for several runs)");
  sub->add_option("--smooth", args->smooth, "EMA weight for the training curves, in [0, 1); 0 = raw only")
      ->check(CLI::Range(0.0, 0.999));
  sub->add_flag("--objective", args->objective, "Also draw the optimised objective (thin, under the group curves)");
  sub->final_callback([args, &selected] {
    selected = [args] {
      namespace fs = std::filesystem;
      SFTGO_CHECK_HINT(args->run_dirs.size() == 1 || !args->out.empty(), ErrorKind::kUsage,
                       "name the figure: -o compare.svg", "plot: ", args->run_dirs.size(),
                       " run directories need --out");
      const std::string out =
          args->out.empty() ? (fs::path(args->run_dirs[0]) / "group_losses.svg").string() : args->out;
      std::vector<train::PlotRun> runs;
      for (const auto& d : args->run_dirs) {
        std::string label = fs::path(d).lexically_normal().filename().string();
        if (label.empty()) label = fs::path(d).lexically_normal().parent_path().filename().string();
        runs.push_back({label, (fs::path(d) / "metrics.jsonl").string()});
      }
      train::PlotOptions opt;
      opt.title =
          "SFT-GO group losses: " + (runs.size() == 1 ? args->run_dirs[0] : std::to_string(runs.size()) + " runs");
      opt.smooth = args->smooth;
      opt.objective = args->objective;
      const std::string svg = train::plot_runs_svg(runs, opt);
      // An uncreatable --out directory is a clear error naming the flag (issue 17), not an internal one.
      const fs::path dir = fs::path(out).parent_path();
      std::error_code ec;
      if (!dir.empty()) fs::create_directories(dir, ec);
      SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, "give --out a path in a directory this user can create and write to",
                       "plot --out ", out, ": cannot create its directory ", dir.string(), ": ", ec.message());
      try {
        write_file_atomic(out, svg);
      } catch (const Error& e) {
        SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "plot --out ", out, ": ", e.message());
      } catch (const std::exception& e) {  // std::filesystem errors
        SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "plot --out ", out, ": ", e.what());
      }
      std::cout << out << "\n";
      return 0;
    };
  });
}

}  // namespace sftgo::apps
