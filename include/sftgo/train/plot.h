// Group-loss curves of one or more runs (like the SFT-GO paper's Figure 2) as a self-contained SVG.
// scripts/plot_runs.py draws the same figure with matplotlib (PNG and SVG) for reports.
#pragma once

#include <string>
#include <vector>

namespace sftgo::train {

struct PlotRun {
  std::string label;          // legend text, e.g. the run directory's name
  std::string metrics_jsonl;  // RUN_DIR/metrics.jsonl
};

struct PlotOptions {
  std::string title;
  // Exponential moving average weight for the smoothed training curves, in [0, 1) (0 = no smoothing);
  // debiased as TensorBoard does. The raw curve is drawn under it, thin and light.
  double smooth = 0.6;
  bool objective = false;  // also draw the optimised objective (drawn first, so it hides no group curve)
};

// Reads each run's metrics.jsonl and returns an SVG with one panel for training lines and, when any
// run logged eval_* lines (data.eval_path), one for the held-out losses: L_CE (all tokens, blue),
// L_imp (important, orange) and L_unimp (the rest, green), the paper's colours; one dash pattern per
// run. Tick values are 1-2-5 multiples. Throws sftgo::Error naming the file and line for unreadable
// input; a last line without its newline (a writer killed mid-line) is skipped.
std::string plot_runs_svg(const std::vector<PlotRun>& runs, const PlotOptions& options);

// One run, default options (kept for callers of the first version).
std::string plot_metrics_svg(const std::string& metrics_jsonl_path, const std::string& title);

}  // namespace sftgo::train
