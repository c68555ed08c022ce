// Group-loss curves of a run (like the SFT-GO paper's Figure 2) as a self-contained SVG.
#pragma once

#include <string>

namespace sftgo::train {

// Reads RUN_DIR/metrics.jsonl and returns an SVG plotting L_imp, L_unimp, L_CE and the objective
// against the step, with lambda on a secondary scale. Throws sftgo::Error naming the file and line
// for unreadable input.
std::string plot_metrics_svg(const std::string& metrics_jsonl_path, const std::string& title);

}  // namespace sftgo::train
