// `sftgo-train lora-merge`: fold a PEFT LoRA adapter into its base model and write a plain Hugging
// Face checkpoint (what peft's merge_and_unload + save_pretrained give).
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"

namespace sftgo::apps {
namespace {

namespace fs = std::filesystem;

// What transformers' AutoTokenizer and our --model commands read from a model directory.
constexpr std::array<const char*, 4> kTokenizerFiles = {"tokenizer.json", "tokenizer_config.json",
                                                        "special_tokens_map.json", "chat_template.jinja"};

std::string read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  SFTGO_CHECK(in.good(), ErrorKind::kIo, "cannot read ", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The tokenizer files for the merged directory (name -> content), from the first of: the adapter
// directory, the base model directory, the training checkpoint holding the adapter (ADAPTER/..), that
// has a tokenizer.json; plus the base model's generation_config.json (its end-of-turn ids). `source`
// is the directory the tokenizer came from ("" when none has one).
std::map<std::string, std::string> merged_extra_files(const std::string& model_dir, const std::string& adapter_dir,
                                                      std::string* source) {
  std::map<std::string, std::string> files;
  std::error_code ec;
  const fs::path parent = fs::path(adapter_dir).lexically_normal().parent_path();
  std::vector<fs::path> candidates = {adapter_dir, model_dir};
  if (!parent.empty() && fs::is_regular_file(parent / "trainer_state.json", ec)) candidates.push_back(parent);
  source->clear();
  for (const fs::path& dir : candidates) {
    if (!fs::is_regular_file(dir / "tokenizer.json", ec)) continue;
    for (const char* name : kTokenizerFiles)
      if (fs::is_regular_file(dir / name, ec)) files[name] = read_whole_file(dir / name);
    *source = dir.string();
    break;
  }
  const fs::path generation = fs::path(model_dir) / "generation_config.json";
  if (fs::is_regular_file(generation, ec)) files["generation_config.json"] = read_whole_file(generation);
  return files;
}

}  // namespace

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
      // The tokenizer goes with the weights (same atomic swap): score/eval/generate --model OUT and
      // transformers' AutoTokenizer need it.
      std::string tokenizer_source;
      so.extra_files = merged_extra_files(args->model_dir, args->adapter_dir, &tokenizer_source);
      model::save_pretrained(*m, args->out_dir, so);
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
