// `sftgo-train lora-merge`: fold a PEFT LoRA adapter into its base model and write a plain Hugging
// Face checkpoint (what peft's merge_and_unload + save_pretrained give).
#include <cstdio>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"

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
      // Merged in fp32 (W + s B A rounded once), written in --dtype.
      model::ModelOptions mo;
      mo.dtype = torch::kFloat;
      model::LlamaModel m = model::load_pretrained(args->model_dir, mo);
      model::load_lora_adapter(*m, args->adapter_dir);
      const auto o = model::lora_options(*m);
      model::merge_lora(*m);
      model::SaveOptions so;
      so.dtype = parse_dtype(args->dtype, "--dtype", ErrorKind::kUsage);
      model::save_pretrained(*m, args->out_dir, so);
      std::fprintf(stderr, "merged LoRA r=%lld (%zu target module kinds, scaling %.6g) into %s -> %s (%s)\n",
                   static_cast<long long>(o.rank), o.target_modules.size(), o.scaling(), args->model_dir.c_str(),
                   args->out_dir.c_str(), args->dtype.c_str());
      return 0;
    };
  });
}

}  // namespace sftgo::apps
