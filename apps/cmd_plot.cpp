// `sftgo-train plot RUN_DIR [RUN_DIR ...]`: group-loss curves from metrics.jsonl to an SVG or a PNG
// (by the --out extension; RUN_DIR/group_losses.svg for one run by default).
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/plot.h"

namespace sftgo::apps {

namespace {

struct PlotArgs {
  std::vector<std::string> run_dirs;
  std::string out, labels, title;
  double smooth = 0.6, scale = 2.0;
  bool objective = false;
};

int run_plot(const PlotArgs& a) {
  namespace fs = std::filesystem;
  SFTGO_CHECK_HINT(a.run_dirs.size() == 1 || !a.out.empty(), ErrorKind::kUsage, "name the figure: -o compare.png",
                   "plot: ", a.run_dirs.size(), " run directories need --out");
  const std::string out = a.out.empty() ? (fs::path(a.run_dirs[0]) / "group_losses.svg").string() : a.out;
  std::string ext = fs::path(out).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  SFTGO_CHECK_HINT(ext == ".svg" || ext == ".png", ErrorKind::kUsage, "e.g. -o run.png or -o run.svg", "plot --out ",
                   out, ": the file name must end in .svg or .png (the format follows it)");
  std::vector<std::string> labels;
  if (!a.labels.empty()) {
    labels = split(a.labels, ',');
    SFTGO_CHECK_HINT(labels.size() == a.run_dirs.size(), ErrorKind::kUsage, "one name per run directory, in order",
                     "plot --labels '", a.labels, "' names ", labels.size(), " runs, ", a.run_dirs.size(), " given");
  }
  std::vector<train::PlotRun> runs;
  for (size_t i = 0; i < a.run_dirs.size(); ++i)
    runs.push_back(train::plot_run_from_dir(a.run_dirs[i], labels.empty() ? "" : trim(labels[i])));
  train::PlotOptions opt;
  opt.title = a.title;
  opt.smooth = a.smooth;
  opt.objective = a.objective;
  const std::string bytes = ext == ".png" ? train::plot_runs_png(runs, opt, a.scale) : train::plot_runs_svg(runs, opt);
  // An uncreatable --out directory is a clear error naming the flag (issue 17), not an internal one.
  const fs::path dir = fs::path(out).parent_path();
  std::error_code ec;
  if (!dir.empty()) fs::create_directories(dir, ec);
  SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, "give --out a path in a directory this user can create and write to",
                   "plot --out ", out, ": cannot create its directory ", dir.string(), ": ", ec.message());
  try {
    write_file_atomic(out, bytes);
  } catch (const Error& e) {
    SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "plot --out ", out, ": ", e.message());
  } catch (const std::exception& e) {  // std::filesystem errors
    SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "plot --out ", out, ": ", e.what());
  }
  std::cout << out << "\n";
  return 0;
}

}  // namespace

void register_plot_command(CLI::App& app, std::function<int()>& selected) {
  auto args = std::make_shared<PlotArgs>();
  auto* sub = app.add_subcommand("plot",
                                 "Plot runs' group losses (L_CE, L_imp, L_unimp; training and held-out) to an SVG "
                                 "or PNG, several runs on one figure");
  sub->add_option("run_dirs", args->run_dirs, "Run directories holding metrics.jsonl (one dash pattern each)")
      ->required();
  sub->add_option("--out,-o", args->out,
                  "Output .svg or .png, by its extension (default RUN_DIR/group_losses.svg; required for several "
                  "runs)");
  sub->add_option("--labels", args->labels, "Comma-separated legend names, one per run (default: directory names)");
  sub->add_option("--title", args->title,
                  "Figure title (default: the method from each run's resolved_config.yaml and the run's name)");
  sub->add_option("--smooth", args->smooth,
                  "Smoothing of the training curves in [0, 1): a centred local fit, weight smooth^distance; 0 = raw")
      ->check(CLI::Range(0.0, 0.999));
  sub->add_option("--scale", args->scale, "PNG pixels per SVG pixel (default 2: a 2400-pixel-wide figure)")
      ->check(CLI::Range(0.5, 8.0));
  sub->add_flag("--objective", args->objective,
                "Also draw the optimised objective (thin, under the group curves; for SFT it is L_CE itself)");
  sub->final_callback([args, &selected] { selected = [args] { return run_plot(*args); }; });
}

}  // namespace sftgo::apps
