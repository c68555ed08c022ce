// `sftgo-train plot RUN_DIR`: group-loss curves from metrics.jsonl to RUN_DIR/group_losses.svg.
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/plot.h"

namespace sftgo::apps {

void register_plot_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::string run_dir;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("plot", "Plot a run's group losses (L_imp, L_unimp, L_CE) to an SVG");
  sub->add_option("run_dir", args->run_dir, "Run directory holding metrics.jsonl")->required();
  sub->add_option("--out,-o", args->out, "Output SVG (default RUN_DIR/group_losses.svg)");
  sub->final_callback([args, &selected] {
    selected = [args] {
      namespace fs = std::filesystem;
      const std::string out = args->out.empty() ? (fs::path(args->run_dir) / "group_losses.svg").string() : args->out;
      write_file_atomic(out, train::plot_metrics_svg((fs::path(args->run_dir) / "metrics.jsonl").string(),
                                                     "SFT-GO group losses: " + args->run_dir));
      std::cout << out << "\n";
      return 0;
    };
  });
}

}  // namespace sftgo::apps
