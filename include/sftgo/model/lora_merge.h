// Folding a PEFT LoRA adapter into its base model and writing a plain Hugging Face checkpoint
// directory (what peft's merge_and_unload + save_pretrained give), with the tokenizer files beside it.
#pragma once

#include <string>

#include "sftgo/model/lora_config.h"

namespace sftgo::model {

struct LoraMergeOptions {
  std::string model_dir;          // base model: HF checkpoint directory
  std::string adapter_dir;        // adapter_config.json + adapter_model.safetensors
  std::string out_dir;            // replaced as a whole (a new directory renamed over it)
  std::string dtype = "float32";  // of the written weights; the merge itself is computed in float32
};

struct LoraMergeResult {
  LoraOptions adapter;           // the merged adapter's options
  std::string tokenizer_source;  // directory the tokenizer files came from; "" when none had one
};

// Refuses (kUsage, before anything is loaded) an out_dir whose replacement would delete the merge's
// own inputs, the current directory or a directory that holds no checkpoint; removes what an
// interrupted merge into out_dir left behind; merges W + s B A in float32 and writes out_dir in
// `dtype` with the tokenizer files of the first of adapter_dir, model_dir, the adapter's training
// checkpoint that has a tokenizer.json, plus model_dir's generation_config.json.
LoraMergeResult merge_lora_to_checkpoint(const LoraMergeOptions& options);

}  // namespace sftgo::model
