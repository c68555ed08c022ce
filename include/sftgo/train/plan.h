// Memory planner: per-rank bytes of a training config for each way of sharding the model state, before
// any GPU is rented (`sftgo-train plan`, docs/memory.md). Pure arithmetic over the resolved Config and
// the model shape: no LibTorch, nothing allocated. The buffers it counts are the ones the Updaters,
// dist::ZeroOptimizer, dist::ShardReducer and dist::ShardedParams allocate (src/train/updater.cpp,
// src/dist/zero.cpp, src/dist/zero2.cpp, src/dist/zero3.cpp): every row is runnable, dist.zero 0-3 and,
// with stage 2 or 3, dist.offload_optimizer: cpu (the fp32 master, rule-state and gradient shards in
// host memory: the `host` column). ZeRO-3 keeps whole only the frozen weights, the outer unit
// (embedding, final norm, untied head) and 2 decoder layers (the running and the prefetched one), and
// recomputes every layer in backward whatever model.activation_checkpointing says.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sftgo/config/config.h"
#include "sftgo/model/config.h"

namespace sftgo::train {

enum class PlanStage { kDdp, kZero1, kZero2, kZero3 };

// One way to hold the model state across ranks.
struct PlanChoice {
  std::string name;  // "ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"
  PlanStage stage = PlanStage::kDdp;
  bool cpu_offload = false;  // dist.offload_optimizer: cpu: fp32 master, rule state and gradient shards on the host
  bool implemented = true;   // every row runs today (kept for the JSON's `implemented`)
};

// Bytes one rank holds on its accelerator (or, on a CPU run, in its process).
struct MemoryBreakdown {
  int64_t weights = 0;      // working weights (frozen base included): all, or ZeRO-3's gathered units
  int64_t gradients = 0;    // gradient buffers, plus the largest transient per-backward gradient
  int64_t masters = 0;      // fp32 master weights
  int64_t moments = 0;      // AdamW exp_avg + exp_avg_sq
  int64_t comm = 0;         // communication buffers not already counted as gradients
  int64_t activations = 0;  // one micro-batch's forward/backward working set (ActivationBreakdown::total)
  // Exists only during the optimizer step, when the activations are gone: Gloo's reduce-scatter
  // (CPU runs) works on a clone of the whole flat gradient buffer; NCCL needs none. One process with
  // its gradients freed: clip_grad_norm's float64 copy of one slice of the largest parameter.
  int64_t step_transient = 0;
  // One process with no reducer and no ZeRO (world 1, dist.zero 0, the plain updater, one micro-batch
  // per step): zero_grad sets the gradients to none, so they exist only from the backward to the
  // optimizer step and never beside a forward's activations. Its peak is then the larger of the
  // backward's start (activations + backward_gradients, the gradients written by then: the LM head's)
  // and the step (all gradients + step_transient). Every other row holds its gradients all the time.
  bool gradients_freed = false;
  int64_t backward_gradients = 0;  // gradients alive beside the activations (gradients_freed rows only)

  // Held from one step to the next.
  int64_t held() const { return weights + masters + moments + comm + (gradients_freed ? 0 : gradients); }
  // The forward/backward phase and the optimizer-step phase, beyond what is held.
  int64_t backward_phase() const { return activations + (gradients_freed ? backward_gradients : 0); }
  int64_t step_phase() const { return step_transient + (gradients_freed ? gradients : 0); }
  bool peak_at_step() const { return step_phase() > backward_phase(); }
  int64_t total() const { return held() + (peak_at_step() ? step_phase() : backward_phase()); }
};

// One micro-batch's activation memory, by where it comes from.
struct ActivationBreakdown {
  int64_t tokens = 0;             // micro_batch_size x max_seq_len (padding to the longest is the worst case)
  int64_t per_layer = 0;          // tensors one decoder layer saves for backward
  int64_t layers = 0;             // all layers: L x per_layer, or with checkpointing L inputs + one recomputed layer
  int64_t backward_working = 0;   // gradients flowing through one layer during backward
  int64_t head = 0;               // embedding output, final norm, fused LM head + CE vocabulary blocks
  int64_t autocast_weights = 0;   // bf16_autocast: bf16 casts of the linear weights (forward to end of backward)
  int64_t total() const { return layers + backward_working + head + autocast_weights; }
};

struct PlanRow {
  PlanChoice choice;
  MemoryBreakdown device;  // per rank on the GPU
  int64_t host = 0;        // per rank in host memory (offload choices only)
  bool fits = false;       // device.total() + kPlanReserveBytes <= the GPU's memory
  bool current = false;    // the choice this config runs (dist.zero or dist.zero1, and dist.offload_optimizer)
  bool recomputes = false;  // ZeRO-3: every layer recomputed in backward (activations = activations_recomputed)
};

struct PlanOptions {
  int world_size = 1;
  double gpu_mem_gb = 80.0;  // 1 GB = 1e9 bytes
};

// CUDA context, NCCL's own buffers and allocator slack, kept free on every GPU when judging a fit.
inline constexpr int64_t kPlanReserveBytes = int64_t{2'000'000'000};

struct MemoryPlan {
  model::LlamaConfig shape;
  int64_t total_params = 0;
  int64_t trainable_params = 0;  // all of them, or the LoRA adapters
  int world_size = 1;
  int64_t gpu_mem_bytes = 0;
  std::string precision;  // train.precision
  std::string backend;    // "nccl" (a GPU job) or "gloo" (dist.backend gloo, or auto with model.device cpu)
  int64_t weight_bytes = 0;     // bytes per working weight element (2 bf16, 4 fp32)
  int64_t trainable_bytes = 0;  // bytes per trainable element (LoRA adapters are fp32)
  ActivationBreakdown activations;
  // ZeRO-3's activations: plan_activations with model.activation_checkpointing true (the weights are freed
  // between a layer's forward and its backward, so stage 3 always recomputes).
  ActivationBreakdown activations_recomputed;
  // ZeRO-3's gathered units in the trained parameters' dtype: the outer one (embedding, final norm and
  // untied head; LoRA: the lm_head adapter if targeted) and one decoder layer (LoRA: its adapters); the
  // `zero3` row's weights hold the frozen ones, the outer unit and zero3_layers_resident layers.
  int64_t zero3_outer_bytes = 0;
  int64_t zero3_layer_bytes = 0;
  int64_t zero3_layers_resident = 0;  // min(2, layers): the running layer and the prefetched one
  std::vector<PlanRow> rows;
};

// The model shape training would build: model.path's config.json when given, else model.preset with
// the model.* overrides applied (as Trainer set-up does).
model::LlamaConfig planned_model_shape(const Config& cfg);

// Trainable elements of LoRA adapters on `shape` (rank r: r x (in + out) per targeted projection).
int64_t lora_adapter_params(const model::LlamaConfig& shape, const LoraConfig& lora);

// One micro-batch's activations for `cfg` on `shape`.
ActivationBreakdown plan_activations(const Config& cfg, const model::LlamaConfig& shape);

// Every choice's per-rank bytes at options.world_size ranks.
MemoryPlan plan_memory(const Config& cfg, const model::LlamaConfig& shape, const PlanOptions& options);

// A readable table (GB = 1e9 bytes) and the same numbers as JSON (bytes).
std::string plan_table(const MemoryPlan& plan);
std::string plan_json(const MemoryPlan& plan);

}  // namespace sftgo::train
