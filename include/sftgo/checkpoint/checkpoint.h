// Training checkpoints: a directory that Hugging Face can load (config.json, safetensors, tokenizer
// files) plus what an exact resume needs (optimizer state, trainer state). Written atomically:
// everything goes into a temporary sibling directory that is renamed into place at the end, so a
// crash mid-save leaves the previous checkpoints untouched and never a half-written one.
//
// Layout of RUN_DIR/checkpoints/step_00000100/:
//   config.json, model.safetensors[.index.json + shards]  HF weights (model::save_pretrained)
//   tokenizer.json, tokenizer_config.json                  copied from the run's tokenizer
//   generation_config.json                                 copied from model.path when it has one
//   optimizer.pt                                           torch::serialize archive of the optimizer
//   master_weights.safetensors                             fp32 master weights (bf16 runs only)
//   zero_rankRRRRR_of_WWWWW.pt                             ZeRO-1 runs instead of optimizer.pt: each
//                                                          rank's optimizer state and fp32 master shard
//   zero_manifest.json                                     ZeRO-1: each shard's name, size and digest
//   trainer_state.json                                     step, sampler position, lambda, RNG, ...
//   resolved_config.yaml                                   the config the run used
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <map>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sftgo::model {
class LlamaModelImpl;
}

namespace sftgo::checkpoint {

// The best evaluation so far of one tracked metric (train.save_best, train.early_stopping_*): its value and
// step (-1: none yet) and the evaluations since without an improvement.
struct TrackedBest {
  std::string metric;
  double value = 0.0;
  int64_t step = -1;
  int64_t bad_evals = 0;
};

// What the trainer needs to continue exactly where it stopped.
struct TrainerState {
  int64_t step = 0;  // optimizer steps completed
  int64_t total_steps = 0;
  int64_t sampler_epoch = 0;  // data::SamplerState
  int64_t sampler_index = 0;
  int64_t nan_skips = 0;
  int64_t tokens_seen = 0;
  double lambda = 0.0;
  double elapsed_s = 0.0;     // training time before this checkpoint
  std::string rng_state_hex;  // CPU generator state
  // CUDA runs: each rank's GPU generator state (LoRA dropout draws from it), index = rank; empty on the
  // CPU and in checkpoints written before it was saved (JSON "cuda_rng_states", absent when empty).
  std::vector<std::string> cuda_rng_states_hex;
  std::string config_yaml;    // resolved config, for a mismatch check on resume
  int world_size = 1;
  // train.intermediate_checkpoints: weights: the checkpoint holds no optimizer state (nor fp32 masters)
  // and cannot be resumed (JSON "weights_only": true; absent = false).
  bool weights_only = false;
  // train.save_best / train.early_stopping_metric as of this step (JSON "best" / "early_stopping",
  // absent when the run tracks none): a resume continues the same best and patience count.
  std::optional<TrackedBest> best;
  std::optional<TrackedBest> early_stopping;

  std::string to_json() const;
  // Validates what it reads back, since the file may be damaged or hand-edited: counts are integers
  // >= 0, step <= total_steps, lambda and elapsed_s finite, world_size >= 1, rng_state exactly
  // expected_rng_state_hex_size() hex digits, cuda_rng_states (when present) one non-empty hex string
  // per rank. Throws Error(kFormat) naming `source` and the field.
  static TrainerState from_json(const std::string& text, const std::string& source);
};

// Hex digits of this LibTorch's CPU generator state (a fixed-size struct).
size_t expected_rng_state_hex_size();

struct SaveRequest {
  const model::LlamaModelImpl* model = nullptr;
  // nullptr when the optimizer state travels in move_files instead (ZeRO-1: one shard per rank).
  torch::optim::Optimizer* optimizer = nullptr;
  // Files renamed into the checkpoint before trainer_state.json marks it complete (ZeRO-1 shards
  // that every rank wrote into a staging directory on the same filesystem).
  std::vector<std::string> move_files;
  TrainerState state;
  // Copied next to the weights when they exist: the tokenizer's files, the base's generation_config.json.
  std::vector<std::string> tokenizer_files;
  std::string resolved_config_yaml;
  // fp32 master weights of a bf16 run ([HF name, tensor]); saved as master_weights.safetensors so a
  // resume continues from the exact fp32 values, not from their bf16 rounding.
  std::vector<std::pair<std::string, at::Tensor>> master_weights;
  // Called with each model tensor's HF name just before it is written (model::SaveOptions::before_read).
  std::function<void(const std::string&)> before_weight;
};

std::string checkpoint_dir_name(int64_t step);             // "step_00000100"
std::string checkpoints_root(const std::string& run_dir);  // RUN_DIR/checkpoints

// Saves into RUN_DIR/checkpoints/step_N atomically, then prune_checkpoints(run_dir, N, keep_last).
// Returns the checkpoint directory. On any failure (a full disk: ENOSPC, EIO, a LibTorch or iostream
// error while writing) it removes its partial output and throws Error naming the file; the
// checkpoints saved before stay complete and usable.
std::string save_checkpoint(const std::string& run_dir, const SaveRequest& request, int64_t keep_last);

// Keeps the checkpoint of `saved_step` and the newest keep_last - 1 older ones; never deletes the
// checkpoint just saved nor any with a higher step (not this run's past), nor checkpoints/best's target.
void prune_checkpoints(const std::string& run_dir, int64_t saved_step, int64_t keep_last);

// RUN_DIR/checkpoints/best -> checkpoint_dir's name: a relative symlink replaced atomically (rename).
// prune_checkpoints never deletes its target and does not count it in keep_last. Error(kIo) on failure.
void point_best_at(const std::string& run_dir, const std::string& checkpoint_dir);

// Complete checkpoints (trainer_state.json present) under RUN_DIR/checkpoints, oldest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
// "auto" -> the newest intact checkpoint of run_dir (nullopt when there is none at all; a damaged
// newer one is skipped with a warning naming it and why; Error when all are damaged); otherwise the
// given directory, which must be an intact checkpoint. A weights-only checkpoint (the newest intact
// one for "auto") is refused with an Error naming it and what it lacks.
std::optional<std::string> resolve_resume_dir(const std::string& spec, const std::string& run_dir);

// "" when `dir` looks resumable without reading tensor data: trainer_state.json parses and
// validates, the safetensors headers parse and match the file sizes, config.json is there, and
// optimizer.pt (or every ZeRO-1 shard) is a complete archive (not looked for in a weights-only
// checkpoint). Else the first problem found.
std::string checkpoint_problem(const std::string& dir);

TrainerState load_trainer_state(const std::string& checkpoint_dir);
// Restores optimizer.pt into an optimizer built over the same parameters, every tensor read straight
// onto optimizer_device(optimizer) whatever device the file was saved from.
void load_optimizer_state(const std::string& checkpoint_dir, torch::optim::Optimizer& optimizer);
// The device of the optimizer's first parameter (one device per rank); the CPU when it has none, or
// when it is the meta device (no data to read into: the caller moves the state after loading).
c10::Device optimizer_device(const torch::optim::Optimizer& optimizer);

// Copies master_weights.safetensors into `targets` ([HF name, fp32 tensor on any device], e.g. a bf16
// run's masters) tensor by tensor straight from the mapped file, releasing each one's pages after its
// copy: a resume holds no second copy of the masters. False (nothing copied) when the checkpoint has
// none. A target missing from the file, or not F32 there, or of another shape: Error(kFormat) naming
// the file and tensor.
bool load_master_weights_into(const std::string& checkpoint_dir,
                              const std::vector<std::pair<std::string, at::Tensor>>& targets);

// CPU RNG state as hex and back (exact resume of anything drawing random numbers); setting a state
// of the wrong length or with non-hex digits throws Error(kFormat).
std::string cpu_rng_state_hex();
void set_cpu_rng_state_hex(const std::string& hex);

// The same for the default generator of any device (CUDA: that GPU's Philox seed and offset; CPU: the
// state above). Setting checks the length against the generator's current state and the digits, and
// throws Error(kFormat) naming what is wrong.
std::string rng_state_hex(c10::Device device);
void set_rng_state_hex(c10::Device device, const std::string& hex);

}  // namespace sftgo::checkpoint
