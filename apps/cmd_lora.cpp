// `sftgo-train lora-merge`: fold a PEFT LoRA adapter into its base model and write a plain Hugging
// Face checkpoint (what peft's merge_and_unload + save_pretrained give); model/lora_merge.h does it.
#include <cstdio>

#include "commands.h"
#include "sftgo/core/log.h"
#include "sftgo/model/lora_merge.h"

namespace sftgo::apps {

void register_lora_merge_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::string model_dir, adapter_dir, out_dir, dtype = "float32";
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "lora-merge", "Fold a LoRA adapter (PEFT layout) into its base model and save a Hugging Face checkpoint");
  sub->add_option("--model,-m", args->model_dir, "Base model: Hugging Face checkpoint directory")->required();
  sub->add_option("--adapter,-a", args->adapter_dir,
                  "Adapter directory (adapter_config.json + adapter_model.safetensors)")
      ->required();
  sub->add_option("--out,-o", args->out_dir, "Output directory for the merged checkpoint (replaced as a whole)")
      ->required();
  sub->add_option("--dtype", args->dtype,
                  "dtype of the written weights: float32 | bfloat16 (merging is done in float32)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->final_callback([args, &selected] {
    selected = [args] {
      const model::LoraMergeResult r = model::merge_lora_to_checkpoint(
          {.model_dir = args->model_dir, .adapter_dir = args->adapter_dir, .out_dir = args->out_dir, .dtype = args->dtype});
      const model::LoraOptions& o = r.adapter;
      const std::string& tokenizer_source = r.tokenizer_source;
      std::fprintf(stderr, "merged LoRA r=%lld (%zu target module kinds, scaling %.6g) into %s -> %s (%s)\n",
                   static_cast<long long>(o.rank), o.target_modules.size(), o.scaling(), args->model_dir.c_str(),
                   args->out_dir.c_str(), args->dtype.c_str());
      if (tokenizer_source.empty())
        log_warn("neither {} nor {} has a tokenizer.json: {} has no tokenizer; copy tokenizer.json and "
                 "tokenizer_config.json into it before using it with score, generate or eval",
                 args->adapter_dir, args->model_dir, args->out_dir);
      else
        std::fprintf(stderr, "tokenizer files copied from %s\n", tokenizer_source.c_str());
      return 0;
    };
  });
}

}  // namespace sftgo::apps
