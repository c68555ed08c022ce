// `sftgo-train plan`: per-rank memory of a config for each sharding choice (train/plan.h, docs/memory.md).
#include <iostream>

#include "commands.h"
#include "sftgo/config/config.h"
#include "sftgo/train/plan.h"

namespace sftgo::apps {

void register_plan_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::string path;
    std::vector<std::string> overrides;
    int gpus = 1;
    double gpu_mem_gb = 80.0;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "plan", "Per-GPU (and host) memory of a config for DDP, ZeRO-1/2/3 and ZeRO-2/3 with optimizer offload, and which fit");
  sub->add_option("--config,-c,path", args->path, "Config file (YAML); none = all defaults");
  sub->add_option("--set", args->overrides, "Override a key: --set train.micro_batch_size=4 (repeatable)")
      ->check(key_value_override());
  sub->add_option("--gpus", args->gpus, "Ranks (GPUs) in the job")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--gpu-mem", args->gpu_mem_gb, "Memory of one GPU in GB (1e9 bytes)")->check(CLI::Range(0.001, 1e6));
  sub->add_flag("--json", args->json, "Print the numbers (bytes) as JSON instead of a table");
  sub->final_callback([args, &selected] {
    selected = [args] {
      LoadedConfig loaded = load_config(args->path, args->overrides);
      validate_run_config(loaded);
      const auto& cfg = loaded.config;
      const auto plan = train::plan_memory(cfg, train::planned_model_shape(cfg), {args->gpus, args->gpu_mem_gb});
      std::cout << (args->json ? train::plan_json(plan) : train::plan_table(plan));
      return 0;
    };
  });
}

}  // namespace sftgo::apps
