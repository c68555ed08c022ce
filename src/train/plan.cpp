// Memory planner arithmetic (see plan.h and docs/memory.md for every term and where it comes from).
#include "sftgo/train/plan.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/model/lora_config.h"
#include "sftgo/train/options.h"

namespace sftgo::train {
namespace {

constexpr int64_t kFp32 = 4;
// Extra memory of the fused LM head + CE over the fp32 [T, V] logits it never forms: its block sizes
// aim at 9% (kBudgetShare in src/loss/fused_loss_impl.h) and measured up to 10.5% with BLAS buffers.
constexpr double kFusedLossShare = 0.105;
// Elements per slice of an element-wise update rule and of clip_grad_norm (kRuleSliceElements in
// include/sftgo/optim/rule.h; the planner does not include LibTorch headers).
constexpr int64_t kRuleSliceElems = int64_t{1} << 22;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool bf16_weights(const Config& cfg) { return cfg.model.dtype == "bfloat16" || cfg.train.precision == "bf16"; }

// Elements of the linear weights of one decoder layer.
int64_t layer_linear_params(const model::LlamaConfig& s) {
  const int64_t q = s.num_attention_heads * s.head_dim, kv = s.num_key_value_heads * s.head_dim;
  return s.hidden_size * (2 * q + 2 * kv) + 3 * s.hidden_size * s.intermediate_size;
}

int64_t layer_params(const model::LlamaConfig& s) { return layer_linear_params(s) + 2 * s.hidden_size; }

// Tensors one decoder layer saves for backward, per token (bytes). Counted from the autograd graph of
// src/model/llama.cpp's Block with ATen's SDPA (tests/python/test_plan.py checks it against the saved
// tensors of the same ops in PyTorch, exactly): each RMSNorm keeps its fp32 input (4H), its normed
// output in the activation dtype (eH), its weighted output (eH, the projections' input) and 4-byte rstd;
// attention keeps the roped q (eH), roped k and v (e kv each), the SDPA output (eH, already laid out as
// o_proj's input) and its fp32 log-sum-exp (4 per head); the MLP keeps gate, silu(gate), up and their
// product (eI each). bf16_autocast: norms and residuals stay fp32, the linears save bf16 casts.
int64_t layer_bytes_per_token(const model::LlamaConfig& s, const std::string& precision, int64_t e) {
  const int64_t h = s.num_attention_heads * s.head_dim, kv = s.num_key_value_heads * s.head_dim;
  const int64_t heads = 4 * s.num_attention_heads;
  if (precision == "bf16_autocast") return 30 * h + 4 * kv + 8 * s.intermediate_size + heads + 8;
  return 8 * h + 6 * e * h + 2 * e * kv + 4 * e * s.intermediate_size + heads + 8;
}

// LoRA adapter elements of one decoder layer and of the LM head (rank r: r x (in + out) per targeted
// projection).
struct LoraSplit {
  int64_t per_layer = 0, head = 0;
};

LoraSplit lora_split(const model::LlamaConfig& s, const LoraConfig& lora) {
  const int64_t q = s.num_attention_heads * s.head_dim, kv = s.num_key_value_heads * s.head_dim;
  const int64_t h = s.hidden_size, in = s.intermediate_size;
  LoraSplit out;
  for (const auto& t : model::parse_lora_target_modules(lora.target_modules)) {
    if (t == "q_proj") out.per_layer += h + q;
    if (t == "k_proj" || t == "v_proj") out.per_layer += h + kv;
    if (t == "o_proj") out.per_layer += q + h;
    if (t == "gate_proj" || t == "up_proj" || t == "down_proj") out.per_layer += h + in;
    if (t == "lm_head") out.head += h + s.vocab_size;
  }
  out.per_layer *= lora.rank;
  out.head *= lora.rank;
  return out;
}

}  // namespace

model::LlamaConfig planned_model_shape(const Config& cfg) {
  if (!cfg.model.path.empty()) {
    const auto json = std::filesystem::path(cfg.model.path) / "config.json";
    SFTGO_CHECK_HINT(std::filesystem::is_regular_file(json), ErrorKind::kConfig,
                     "download the checkpoint, or set model.path empty to plan from model.preset's shape",
                     "model.path ", cfg.model.path, ": no config.json there to read the model shape from");
    return model::LlamaConfig::from_file(json.string());
  }
  model::LlamaConfig c = preset_shape(cfg);
  c.validate("model config");
  return c;
}

int64_t lora_adapter_params(const model::LlamaConfig& s, const LoraConfig& lora) {
  const LoraSplit a = lora_split(s, lora);
  return a.per_layer * s.num_hidden_layers + a.head;
}

ActivationBreakdown plan_activations(const Config& cfg, const model::LlamaConfig& s) {
  ActivationBreakdown a;
  const int64_t e = bf16_weights(cfg) ? 2 : kFp32;
  const int64_t h = s.hidden_size, L = s.num_hidden_layers;
  a.tokens = cfg.train.micro_batch_size * cfg.data.max_seq_len;
  a.per_layer = a.tokens * layer_bytes_per_token(s, cfg.train.precision, e);
  // Checkpointing keeps each block's input (the residual stream, in the weights' dtype; fp32 under
  // autocast) and rebuilds one block's graph at a time in backward.
  const int64_t stream = cfg.train.precision == "bf16_autocast" ? kFp32 : e;
  a.layers = cfg.model.activation_checkpointing ? L * a.tokens * h * stream + a.per_layer : L * a.per_layer;
  // While one block runs backward: d(gate), d(up), d(silu) [T, I] and d(x), d(h) [T, H]. An estimate of
  // the autograd temporaries, not a count of saved tensors.
  a.backward_working = a.tokens * e * (3 * s.intermediate_size + 2 * h);
  // Final norm (as one layer's norm) plus the fused loss's blocks; loss.chunk_tokens caps the tokens a
  // pass of the fused loss sees.
  const int64_t loss_tokens = cfg.loss.chunk_tokens > 0 ? std::min(cfg.loss.chunk_tokens, a.tokens) : a.tokens;
  a.head = a.tokens * (kFp32 * h + 2 * e * h + 4) +
           static_cast<int64_t>(kFusedLossShare * static_cast<double>(kFp32 * loss_tokens * s.vocab_size));
  // Autocast's bf16 copies of every linear weight and of the LM head (cast for the fused loss).
  if (cfg.train.precision == "bf16_autocast")
    a.autocast_weights = 2 * (L * layer_linear_params(s) + s.vocab_size * h);
  return a;
}

namespace {

// What every choice's arithmetic needs.
struct StateSizes {
  int64_t frozen = 0, trainable = 0;  // elements
  int64_t wb = 0, tb = 0;             // bytes per working weight / trainable element
  int64_t world = 1, shard = 0;       // shard = ceil(trainable / world), as dist::ZeroAdamW splits
  bool masters_path = false;          // train.precision bf16, full fine-tuning: fp32 masters
  bool fp32_grads = true;             // dist.zero1_fp32_grads
  bool lora = false;
  int64_t embed = 0;                  // V x H elements: the largest dense gradient
  int64_t outer_unit = 0;             // ZeRO-3: trained elements outside the layers (embedding, norm, head)
  int64_t layer_unit = 0;             // ZeRO-3: trained elements of one decoder layer
  int64_t layers = 0;                 // decoder layers
  int64_t rule_states = 2;            // the update rule's state tensors per element (AdamW: exp_avg, exp_avg_sq)
  int64_t bucket = 0;                 // dist.bucket_mb in bytes
  int64_t bucket_buffers = 0;         // ZeRO-2: bytes of the fp32 buckets alive at once (zero2_bucket_buffers)
  bool gloo = false;                  // the CPU backend (dist.backend gloo, or auto on model.device cpu)
  bool one_micro_batch = false;       // train.global_batch_size = micro_batch_size x world: no accumulation
  int64_t largest = 0;                // elements of the largest trainable parameter
};

// A gradient that exists whole for a moment during backward: a bf16 parameter's gradient before the
// post-accumulate hook adds it into fp32 and frees it, or, with several ranks, the embedding's dense
// per-micro-batch gradient that AccumulateGrad adds into its bucket (docs/architecture.md).
int64_t transient_grad(const StateSizes& z, bool hooked) {
  if (z.lora) return 0;
  if (z.masters_path || hooked) return z.embed * 2;
  return z.world > 1 ? z.embed * z.tb : 0;
}

// Today's Updaters: PlainUpdater / Fp32MastersUpdater with GradReducer buckets (ddp) and Zero1Updater.
MemoryBreakdown built_state(const StateSizes& z, PlanStage stage) {
  MemoryBreakdown m;
  m.weights = z.frozen * z.wb + z.trainable * z.tb;
  if (stage == PlanStage::kDdp) {
    // Gradients are the all-reduce buckets themselves (views), so no separate communication buffer.
    const int64_t g = z.masters_path ? kFp32 : z.tb;
    m.gradients = z.trainable * g + transient_grad(z, false);
    m.masters = z.masters_path ? kFp32 * z.trainable : 0;
    m.moments = 2 * z.trainable * (z.masters_path ? kFp32 : z.tb);
    // One process, plain updater, one micro-batch per step: no bucket views and no fp32 master
    // gradients keep the gradients, so zero_grad(set_to_none) frees them after each step.
    if (z.world == 1 && !z.masters_path && z.one_micro_batch) {
      m.gradients_freed = true;
      // The fused loss's backward writes the LM head's [V, H] gradient first, while every layer's
      // activations are still saved (tied or not); later layers free activations as their gradients
      // appear. LoRA: all adapter gradients (MB), counted as alive.
      m.backward_gradients = z.lora ? z.trainable * z.tb : z.embed * z.tb;
      // clip_grad_norm squares one slice of the largest parameter in float64 at a time; AdamW's sqrt of
      // one slice is half of it; everything else in the step works in place.
      m.step_transient = 8 * std::min(z.largest, kRuleSliceElems);
    }
    return m;
  }
  // ZeRO-1: one flat gradient buffer (fp32 when bf16 gradients are hooked into it), an fp32 master
  // shard (also for fp32 weights) and moments shard, and the reduce-scatter/all-gather shard buffer.
  const bool hooked = z.fp32_grads && z.tb < kFp32;
  const int64_t g = hooked ? kFp32 : z.tb;
  m.gradients = z.shard * z.world * g + transient_grad(z, hooked);
  m.masters = kFp32 * z.shard;
  m.moments = 2 * kFp32 * z.shard;
  m.comm = z.shard * g;
  // c10d's ProcessGroupGloo implements reduce-scatter as an all-reduce of a clone of its input.
  if (z.gloo && z.world > 1) m.step_transient = z.shard * z.world * g;
  return m;
}

// ZeRO-2 (dist::ShardReducer, ZeroOptimizer with sharded gradients): an fp32 gradient shard, fp32 master
// and moment shards, and no full-size gradient buffer. Each parameter's gradient exists whole in the
// working dtype until its hook copies it into an fp32 bucket and frees it; at most 2 buckets are in
// flight while a third fills (z.bucket_buffers). Over NCCL each owner's slice is reduced in place; over
// Gloo with several ranks the buckets go all-to-all in pieces whose receive buffers (world x this rank's
// part of a piece: at most one bucket each) hold at most 2 buckets at once. dist::BufferPool keeps both
// for the next micro-batch within that bound. The step's all-gather runs in pieces of world x piece
// working values (piece = dist.bucket_mb / 4 bytes / world).
MemoryBreakdown zero2_state(const StateSizes& z) {
  MemoryBreakdown m;
  m.weights = z.frozen * z.wb + z.trainable * z.tb;
  m.gradients = kFp32 * z.shard + (z.lora ? 0 : z.embed * z.tb);
  m.masters = kFp32 * z.shard;
  m.moments = 2 * kFp32 * z.shard;
  m.comm = z.bucket_buffers + (z.gloo && z.world > 1 ? std::min(2 * z.bucket, kFp32 * z.world * z.shard) : 0);
  const int64_t piece = std::max<int64_t>(1, std::min(z.shard, std::max<int64_t>(1, z.bucket / kFp32) / z.world));
  // Gloo's all-gather gathers into a flat tensor of its own, then copies into ours; a bf16 piece is a
  // cast of the fp32 master piece.
  m.step_transient = z.world * piece * z.tb * (z.gloo && z.world > 1 ? 2 : 1) + (z.tb < kFp32 ? piece * z.tb : 0);
  return m;
}

// Upper bound of 3 consecutive ZeRO-2 buckets in fp32: a bucket holds parameters up to dist.bucket_mb, or
// one larger parameter alone (dist::plan_buckets), so no 3 buckets exceed the 3 largest of those
// parameters and 3 full buckets; nor all trainable values.
int64_t zero2_bucket_buffers(const model::LlamaConfig& s, int64_t bucket, int64_t trainable, bool lora) {
  std::vector<int64_t> sizes(3, bucket);
  if (!lora) {
    const int64_t q = s.num_attention_heads * s.head_dim, kv = s.num_key_value_heads * s.head_dim;
    const int64_t h = s.hidden_size, in = s.intermediate_size;
    for (int64_t n : {s.vocab_size * h, s.tie_word_embeddings ? 0 : s.vocab_size * h, h * in, h * in, h * in,
                      h * q, q * h, h * kv, h * kv})
      if (kFp32 * n > bucket) sizes.push_back(kFp32 * n);
  }
  std::sort(sizes.rbegin(), sizes.rend());
  return std::min(sizes[0] + sizes[1] + sizes[2], kFp32 * trainable);
}

// ZeRO-3 (dist::ShardedParams over ZeRO-2's ZeroOptimizer and ShardReducer): ZeRO-2's fp32 master,
// rule-state and gradient shards and buckets, but no working weights kept: the frozen ones stay whole
// (a LoRA base), and each gather casts the fp32 master shard into a buffer of the working dtype, so at
// most the outer unit (resident from a step's first forward to the end of its backward) and 2 layers
// (the running one and the prefetched one) exist at once. Nothing is gathered after the update (step
// tmp 0). A layer's backward (always a recomputation) returns all its parameters' gradients at once, in
// the working dtype, before their hooks copy them into buckets: the transient is the larger of that
// and the embedding's (LoRA adapters: none counted, as for ZeRO-2).
MemoryBreakdown zero3_state(const StateSizes& z) {
  MemoryBreakdown m = zero2_state(z);
  m.weights = z.frozen * z.wb + (z.outer_unit + std::min<int64_t>(2, z.layers) * z.layer_unit) * z.tb;
  m.gradients = kFp32 * z.shard + (z.lora ? 0 : std::max(z.embed, z.layer_unit) * z.tb);
  m.step_transient = 0;
  return m;
}

// dist.offload_optimizer: cpu (stages 2 and 3): the fp32 master shard, the rule's state shards and the
// fp32 gradient shard move to host memory, (2 + rule states) x 4 bytes x shard; the device keeps the
// buckets, the transient gradient, the weights and the step's gather pieces.
MemoryBreakdown offloaded(MemoryBreakdown m, const StateSizes& z, int64_t& host) {
  host = (2 + z.rule_states) * kFp32 * z.shard;
  m.gradients -= kFp32 * z.shard;
  m.masters = 0;
  m.moments = 0;
  return m;
}

// Elements of the largest trainable parameter: a full weight, or a LoRA adapter (rank x its longer side).
int64_t largest_trainable(const Config& cfg, const model::LlamaConfig& s) {
  const int64_t q = s.num_attention_heads * s.head_dim, kv = s.num_key_value_heads * s.head_dim;
  const int64_t h = s.hidden_size, in = s.intermediate_size;
  if (!cfg.lora.enabled) return std::max({s.vocab_size * h, h * in, h * q, h * kv});
  int64_t side = 0;
  for (const auto& t : model::parse_lora_target_modules(cfg.lora.target_modules)) {
    if (t == "lm_head") side = std::max(side, s.vocab_size);
    if (t == "gate_proj" || t == "up_proj" || t == "down_proj") side = std::max(side, in);
    side = std::max({side, h, t == "q_proj" || t == "o_proj" ? q : kv});
  }
  return cfg.lora.rank * side;
}

StateSizes state_sizes(const Config& cfg, const model::LlamaConfig& s, int64_t total, int64_t trainable, int world) {
  StateSizes z;
  z.lora = cfg.lora.enabled;
  z.trainable = trainable;
  z.frozen = total - trainable;
  z.wb = bf16_weights(cfg) ? 2 : kFp32;
  z.tb = z.lora ? kFp32 : z.wb;  // LoRA adapters are fp32 whatever the base
  z.world = world;
  z.shard = ceil_div(trainable, world);
  z.masters_path = !z.lora && cfg.train.precision == "bf16";
  z.fp32_grads = cfg.dist.zero1_fp32_grads;
  z.embed = s.vocab_size * s.hidden_size;
  z.layers = s.num_hidden_layers;
  if (z.lora) {
    const LoraSplit a = lora_split(s, cfg.lora);
    z.outer_unit = a.head;
    z.layer_unit = a.per_layer;
  } else {
    z.outer_unit = z.embed * (s.tie_word_embeddings ? 1 : 2) + s.hidden_size;
    z.layer_unit = layer_params(s);
  }
  z.bucket = static_cast<int64_t>(cfg.dist.bucket_mb * 1024.0 * 1024.0);
  z.bucket_buffers = zero2_bucket_buffers(s, std::max<int64_t>(1, z.bucket), trainable, z.lora);
  // As dist::Comm picks its backend: gloo when asked for, or auto on a CPU run; the plan assumes a GPU
  // (NCCL) for model.device auto.
  z.gloo = cfg.dist.backend == "gloo" || (cfg.dist.backend == "auto" && cfg.model.device == "cpu");
  z.one_micro_batch = cfg.train.global_batch_size == cfg.train.micro_batch_size * world;
  z.largest = largest_trainable(cfg, s);
  return z;
}

const std::vector<PlanChoice>& plan_choices() {
  // No zero1_offload: dist.offload_optimizer: cpu needs stage 2 or 3 (refused by the config otherwise).
  static const std::vector<PlanChoice> choices = {
      {"ddp", PlanStage::kDdp, false, true},          {"zero1", PlanStage::kZero1, false, true},
      {"zero2", PlanStage::kZero2, false, true},      {"zero3", PlanStage::kZero3, false, true},
      {"zero2_offload", PlanStage::kZero2, true, true}, {"zero3_offload", PlanStage::kZero3, true, true},
  };
  return choices;
}

}  // namespace

MemoryPlan plan_memory(const Config& cfg, const model::LlamaConfig& shape, const PlanOptions& options) {
  SFTGO_CHECK(options.world_size >= 1, ErrorKind::kUsage, "plan: --gpus must be at least 1, got ",
              options.world_size);
  SFTGO_CHECK(options.gpu_mem_gb > 0, ErrorKind::kUsage, "plan: --gpu-mem must be positive (GB), got ",
              options.gpu_mem_gb);
  MemoryPlan p;
  p.shape = shape;
  p.total_params = shape.num_parameters();
  p.trainable_params = cfg.lora.enabled ? lora_adapter_params(shape, cfg.lora) : p.total_params;
  if (cfg.lora.enabled) p.total_params += p.trainable_params;
  p.world_size = options.world_size;
  p.gpu_mem_bytes = static_cast<int64_t>(options.gpu_mem_gb * 1e9);
  p.precision = cfg.train.precision;
  p.activations = plan_activations(cfg, shape);
  Config recomputing = cfg;
  recomputing.model.activation_checkpointing = true;
  p.activations_recomputed = plan_activations(recomputing, shape);
  const StateSizes z = state_sizes(cfg, shape, p.total_params, p.trainable_params, options.world_size);
  p.zero3_outer_bytes = z.outer_unit * z.tb;
  p.zero3_layer_bytes = z.layer_unit * z.tb;
  p.zero3_layers_resident = std::min<int64_t>(2, z.layers);
  const bool offload = cfg.dist.offload_optimizer == "cpu";
  p.weight_bytes = z.wb;
  p.backend = z.gloo ? "gloo" : "nccl";
  p.trainable_bytes = z.tb;
  for (const auto& c : plan_choices()) {
    PlanRow r;
    r.choice = c;
    r.device = c.stage == PlanStage::kZero3 ? zero3_state(z)
               : c.stage == PlanStage::kZero2 ? zero2_state(z)
                                              : built_state(z, c.stage);
    if (c.cpu_offload) r.device = offloaded(r.device, z, r.host);
    r.recomputes = c.stage == PlanStage::kZero3;
    r.device.activations = (r.recomputes ? p.activations_recomputed : p.activations).total();
    r.fits = r.device.total() + kPlanReserveBytes <= p.gpu_mem_bytes;
    r.current = static_cast<int>(c.stage) == zero_stage(cfg.dist) && c.cpu_offload == offload;
    p.rows.push_back(r);
  }
  return p;
}

namespace {

std::string gb(int64_t bytes) { return format("{:.2f}", static_cast<double>(bytes) / 1e9); }

std::string stage_name(PlanStage s) {
  switch (s) {
    case PlanStage::kDdp: return "none";
    case PlanStage::kZero1: return "zero1";
    case PlanStage::kZero2: return "zero2";
    case PlanStage::kZero3: return "zero3";
  }
  return "?";
}

std::string status(const PlanChoice& c) { return c.implemented ? "runnable" : "not runnable"; }

// The phase that sets a row's total (the JSON's peak_phase and the table's "peak at").
std::string peak_phase(const MemoryBreakdown& d) { return d.peak_at_step() ? "step" : "backward"; }

// Why a one-process row is smaller than weights + gradients + masters + moments + activations.
std::string freed_gradients_note(const PlanRow& r) {
  const auto& d = r.device;
  return format(
      "Except {} on one process: zero_grad frees the gradients after each step (no all-reduce buckets, no fp32 master "
      "gradients keep them), so they never sit beside a forward's activations. Its total = weights + masters + "
      "moments + comm ({} GB) + the larger of the backward's start, activations + the LM head's gradient the loss "
      "backward writes first ({} + {} = {} GB), and the optimizer step, all gradients + step tmp ({} + {} = {} GB): "
      "the peak is {}.\n",
      r.choice.name, gb(d.held()), gb(d.activations), gb(d.backward_gradients), gb(d.backward_phase()),
      gb(d.gradients), gb(d.step_transient), gb(d.step_phase()),
      d.peak_at_step() ? "the optimizer step" : "the start of the backward");
}

// What ZeRO-3 keeps whole and recomputes, and where the offload rows put the optimizer state.
std::string zero3_note(const MemoryPlan& p) {
  const bool lora = p.trainable_params < p.total_params;
  return format(
      "zero3 keeps whole only {}: {} GB) and {} decoder layers' {} (the running one and the prefetched one: "
      "{} GB each), gathered from the fp32 master shards; it recomputes "
      "every layer in backward whatever model.activation_checkpointing says (activations {} GB). The offload rows "
      "(dist.offload_optimizer: cpu, stages 2 and 3) keep the fp32 master, AdamW moment and gradient shards in "
      "host memory: the host column. dist.zero (0-3, or dist.zero1) and dist.offload_optimizer pick the row.\n",
      lora ? "the frozen weights, the outer unit (the lm_head adapter, if targeted"
           : "the outer unit (embedding, final norm, untied head",
      gb(p.zero3_outer_bytes), p.zero3_layers_resident, lora ? "adapters" : "weights", gb(p.zero3_layer_bytes),
      gb(p.activations_recomputed.total()));
}

}  // namespace

std::string plan_table(const MemoryPlan& p) {
  const auto& s = p.shape;
  const auto& a = p.activations;
  std::string out = format(
      "Memory plan per rank: {} layers, hidden {}, vocab {}: {:.3g} parameters ({:.3g} trainable), "
      "train.precision {}, {} tokens per micro-batch\n"
      "{} rank(s) ({}), {} GB per GPU, {} GB kept free for the CUDA context and NCCL; 1 GB = 1e9 bytes\n\n",
      s.num_hidden_layers, s.hidden_size, s.vocab_size, static_cast<double>(p.total_params),
      static_cast<double>(p.trainable_params), p.precision, a.tokens, p.world_size, p.backend, gb(p.gpu_mem_bytes),
      gb(kPlanReserveBytes));
  out += format("{:<15} {:>8} {:>9} {:>8} {:>8} {:>6} {:>11} {:>9} {:>8} {:>9} {:>9}  {:<4} {}\n", "choice",
                "weights", "gradients", "masters", "moments", "comm", "activations", "step tmp", "peak at",
                "GPU total", "host", "fits", "status");
  for (const auto& r : p.rows) {
    const auto& d = r.device;
    out += format("{:<15} {:>8} {:>9} {:>8} {:>8} {:>6} {:>11} {:>9} {:>8} {:>9} {:>9}  {:<4} {}{}\n",
                  r.choice.name, gb(d.weights), gb(d.gradients), gb(d.masters), gb(d.moments), gb(d.comm),
                  gb(d.activations), gb(d.step_transient), peak_phase(d), gb(d.total()), gb(r.host),
                  r.fits ? "yes" : "no", status(r.choice), r.current ? " (this config)" : "");
  }
  out += format(
      "\nActivations of one micro-batch: {} GB per layer, {} GB for the layers ({}), {} GB backward working set, "
      "{} GB embedding/final norm/fused loss{}\n",
      gb(a.per_layer), gb(a.layers), a.layers == a.per_layer * s.num_hidden_layers ? "all saved" : "checkpointed",
      gb(a.backward_working), gb(a.head),
      a.autocast_weights > 0 ? format(", {} GB bf16 weight casts (autocast)", gb(a.autocast_weights)) : "");
  out += "GPU total = weights + gradients + masters + moments + comm + the larger of activations (peak at backward) "
         "and step tmp (peak at step; the step's temporaries exist after backward has freed the activations).\n";
  for (const auto& r : p.rows)
    if (r.device.gradients_freed) out += freed_gradients_note(r);
  out += zero3_note(p);
  return out;
}

namespace {

nlohmann::json activations_json(const ActivationBreakdown& a) {
  return {{"tokens", a.tokens},
          {"per_layer", a.per_layer},
          {"layers", a.layers},
          {"backward_working", a.backward_working},
          {"head", a.head},
          {"autocast_weights", a.autocast_weights},
          {"total", a.total()}};
}

}  // namespace

std::string plan_json(const MemoryPlan& p) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : p.rows) {
    const auto& d = r.device;
    rows.push_back({{"choice", r.choice.name},
                    {"stage", stage_name(r.choice.stage)},
                    {"cpu_offload", r.choice.cpu_offload},
                    {"implemented", r.choice.implemented},
                    {"status", status(r.choice)},
                    {"current", r.current},
                    {"recomputes", r.recomputes},
                    {"weights", d.weights},
                    {"gradients", d.gradients},
                    {"masters", d.masters},
                    {"moments", d.moments},
                    {"comm", d.comm},
                    {"activations", d.activations},
                    {"step_transient", d.step_transient},
                    {"gradients_freed", d.gradients_freed},
                    {"backward_gradients", d.backward_gradients},
                    {"peak_phase", peak_phase(d)},
                    {"device_total", d.total()},
                    {"host", r.host},
                    {"fits", r.fits}});
  }
  nlohmann::json j = {
      {"units", "bytes"},
      {"world_size", p.world_size},
      {"gpu_mem_bytes", p.gpu_mem_bytes},
      {"reserve_bytes", kPlanReserveBytes},
      {"backend", p.backend},
      {"precision", p.precision},
      {"total_params", p.total_params},
      {"trainable_params", p.trainable_params},
      {"model",
       {{"num_layers", p.shape.num_hidden_layers},
        {"hidden_size", p.shape.hidden_size},
        {"intermediate_size", p.shape.intermediate_size},
        {"vocab_size", p.shape.vocab_size},
        {"num_heads", p.shape.num_attention_heads},
        {"num_kv_heads", p.shape.num_key_value_heads}}},
      {"activations", activations_json(p.activations)},
      {"activations_recomputed", activations_json(p.activations_recomputed)},
      {"zero3",
       {{"outer_unit", p.zero3_outer_bytes},
        {"layer_unit", p.zero3_layer_bytes},
        {"layers_resident", p.zero3_layers_resident}}},
      {"choices", rows}};
  return j.dump(1) + "\n";
}

}  // namespace sftgo::train
