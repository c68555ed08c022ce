// Loading a model for inference: the one path the score, generate, eval and lora-merge commands
// (and the eval module) take from a checkpoint directory to a ready model.
#pragma once

#include <string>

#include "sftgo/model/llama.h"

namespace sftgo::model {

struct InferenceLoadOptions {
  // A Hugging Face checkpoint directory (config.json + model.safetensors[.index.json]); a training
  // checkpoint directory (checkpoint-N/) is one, its weights being in HF layout.
  std::string model_dir;
  std::string adapter_dir;        // optional PEFT LoRA adapter applied on top (model/lora.h)
  std::string dtype = "float32";  // "float32" | "bfloat16"
  std::string device = "cpu";     // "auto" | "cpu" | "cuda" | "cuda:N"
  // How errors about dtype and device name them: the command-line option the value came from.
  std::string dtype_option = "--dtype";
  std::string device_option = "--device";
};

// Parses dtype and device (ErrorKind::kUsage naming the option), builds the model with its
// parameters allocated once on that device and dtype and filled from the checkpoint, applies the
// adapter when one is given, and switches to eval mode. Errors from the checkpoint and the adapter
// name the file and the tensor (load_pretrained, load_lora_adapter).
LlamaModel load_for_inference(const InferenceLoadOptions& options);

}  // namespace sftgo::model
