// Group-loss curves of one or more runs (like the SFT-GO paper's Figure 2) as an SVG or a PNG.
// scripts/plot_runs.py draws the same figure with matplotlib.
#pragma once

#include <string>
#include <vector>

namespace sftgo::train {

struct PlotRun {
  std::string label;          // legend text, e.g. the run directory's name
  std::string metrics_jsonl;  // RUN_DIR/metrics.jsonl
  // loss.objective of the run ("sftgo" | "ce" | "rho1"; "" = unknown): names the method in the
  // default title and tells which curve the objective is (ce: L_CE itself, rho1: L_imp itself).
  std::string objective;
};

struct PlotOptions {
  std::string title;  // "" = default_plot_title(runs)
  // Smoothing of the training curves, in [0, 1) (0 = none): at each step a straight line is fitted
  // by least squares to the raw values with weight smooth^|step distance| on both sides, and its value
  // there is drawn. Centred, so it does not lag, and it starts and ends on the data's trend instead
  // of being pulled towards earlier values as a one-sided EMA is. The raw curve is drawn under it,
  // thin and light.
  double smooth = 0.6;
  bool objective = false;  // also draw the optimised objective (drawn first, so it hides no group curve)
};

// Reads each run's metrics.jsonl and draws one panel for training lines and, when any run logged
// eval_* lines (data.eval_path), one for the held-out losses on the same step axis: L_CE (all
// tokens, blue), L_imp (important, orange) and L_unimp (the rest, green), the paper's colours; one
// dash pattern per run. The step axis starts at 0 and ends at the first tick at or after the last
// step (integer ticks); loss ticks are 1-2-2.5-5 multiples rounded to the data. Steps where a group
// had no token are not drawn for that group. Throws sftgo::Error naming the file and line for
// unreadable input; a last line without its newline (a writer killed mid-line) is skipped.
std::string plot_runs_svg(const std::vector<PlotRun>& runs, const PlotOptions& options);
// The same figure as PNG bytes, `scale` pixels per SVG pixel; sftgo::Error(kUsage) naming the
// missing package in a build without cairo (plot_png_supported() is false).
std::string plot_runs_png(const std::vector<PlotRun>& runs, const PlotOptions& options, double scale = 2.0);
bool plot_png_supported();

// A run directory as a PlotRun: RUN_DIR/metrics.jsonl, the objective from RUN_DIR/resolved_config.yaml
// (left unknown, with a warning, when that file is missing or unreadable) and `label` (default: the
// directory's name).
PlotRun plot_run_from_dir(const std::string& run_dir, const std::string& label = "");

// "SFT-GO losses by token group: demo_tiny", "SFT vs SFT-GO: losses by token group", ...
std::string default_plot_title(const std::vector<PlotRun>& runs);

// One run, default options (kept for callers of the first version).
std::string plot_metrics_svg(const std::string& metrics_jsonl_path, const std::string& title);

}  // namespace sftgo::train
