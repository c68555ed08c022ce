#include "schema.h"

#include <cstdio>
#include <sstream>

#include "sftgo/core/error.h"

namespace sftgo::config_detail {
namespace {

class Builder {
 public:
  explicit Builder(std::vector<Field>& out) : out_(out) {}
  std::vector<Field>& fields() { return out_; }
  template <typename T>
  Field& operator()(std::string key, T& ref, std::string doc) {
    out_.push_back(Field{std::move(key), FieldPtr(&ref), std::move(doc), {}, {}, false, {}, {}, {}});
    return out_.back();
  }

 private:
  std::vector<Field>& out_;
};

}  // namespace

namespace {

// One function per group of sections, in the order of the reference.
void run_model_fields(Builder& add, Config& c) {
  add("run.name", c.run.name, "Run name, used in logs and metrics");
  add("run.output_dir", c.run.output_dir, "Directory for checkpoints, metrics.jsonl and the resolved config");
  add("run.seed", c.run.seed, "Seed for weights init, data order and random grouping").at_least(0);
  add("run.log_level", c.run.log_level, "Logging verbosity").one_of({"debug", "info", "warn", "error"});

  add("tokenizer.path", c.tokenizer.path, "Directory with tokenizer.json (+ tokenizer_config.json), or the file");

  add("model.preset", c.model.preset,
      "Architecture preset when no checkpoint is given. With model.path, a preset set in the config (and any "
      "model.* shape override) must match the checkpoint's config.json, else training stops naming the "
      "differences; auto = the checkpoint's shape, whatever the overrides say (tiny without model.path)")
      .one_of({"tiny", "llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "auto"});
  add("model.path", c.model.path,
      "Hugging Face checkpoint directory to fine-tune; empty = random init from the preset");
  add("model.dtype", c.model.dtype,
      "Parameter dtype; bfloat16 needs train.precision bf16 (fp32 master weights and AdamW state), fp32 with bfloat16 weights is refused")
      .one_of({"float32", "bfloat16"});
  add("model.device", c.model.device, "Device; auto = CUDA when available").one_of({"auto", "cpu", "cuda"});
  add("model.activation_checkpointing", c.model.activation_checkpointing,
      "Recompute each block's activations in backward");
  // Shape bounds are the model's own (LlamaConfig::validate): 2^20 keeps every size product far from
  // int64 overflow (a 2^20 x 2^20 fp32 weight is already 4 TiB), token ids are 32-bit.
  add("model.hidden_size", c.model.hidden_size,
      "Override the preset's hidden size (-1 keeps it; at most 2^20, which keeps size products within int64)")
      .range(1, 1 << 20)
      .or_value(-1);
  add("model.intermediate_size", c.model.intermediate_size,
      "Override the preset's MLP size (-1 keeps it; at most 2^20 as hidden_size)")
      .range(1, 1 << 20)
      .or_value(-1);
  add("model.num_layers", c.model.num_layers, "Override the preset's layer count (-1 keeps it)")
      .range(1, 4096)
      .or_value(-1);
  add("model.num_heads", c.model.num_heads, "Override the preset's attention heads (-1 keeps it)")
      .range(1, 1 << 20)
      .or_value(-1);
  add("model.num_kv_heads", c.model.num_kv_heads, "Override the preset's key/value heads (-1 keeps it)")
      .range(1, 1 << 20)
      .or_value(-1);
  add("model.vocab_size", c.model.vocab_size,
      "Override the preset's vocabulary size (-1 keeps it; token ids are 32-bit)")
      .range(1, 2147483647)
      .or_value(-1);
  add("model.init_std", c.model.init_std, "Std of the normal init for random weights").above(0);
}

void data_grouping_fields(Builder& add, Config& c, bool with_declared) {
  add("data.path", c.data.path, "Training data file (JSONL, or a JSON array for Alpaca)");
  add("data.format", c.data.format, "Record format; auto detects from the first record (shapes: docs/data.md)")
      .one_of({"auto", "lima", "alpaca", "chat", "sharegpt"});
  add("data.template", c.data.template_name, "Prompt template").one_of({"llama3", "alpaca", "plain"});
  add("data.system_prompt", c.data.system_prompt,
      "System message prepended to every conversation (llama3 template); empty = none");
  add("data.max_seq_len", c.data.max_seq_len, "Longest sequence in tokens (4096 in the paper)").range(8, 1 << 20);
  add("data.truncation", c.data.truncation, "Over-long examples: truncate the response, or drop the example")
      .one_of({"truncate", "drop"});
  add("data.on_bad_record", c.data.on_bad_record, "Malformed records: stop at the first, or skip and count them")
      .one_of({"stop", "skip"});
  add("data.packing", c.data.packing, "Pack several examples per sequence (per-document attention, position reset)");
  add("data.cache_dir", c.data.cache_dir, "Where tokenized data, grouping masks and Rho-1 reference losses are cached; under several ranks "
      "also where they exchange their shares of the grouping cache (one directory every rank sees)");
  add("data.eval_path", c.data.eval_path,
      "Held-out data (same format) for eval-loss passes, logged to metrics.jsonl as eval_* lines; empty = none");

  add("grouping.function", c.grouping.function, "Grouping function that marks important tokens (registry name)");
  add("grouping.top_k_percent", c.grouping.top_k_percent,
      "Share of trained tokens marked important (percent); equals 100 - eta_percentile")
      .range(0, 100);
  add("grouping.eta_percentile", c.grouping.eta_percentile,
      "The paper's eta: percentile threshold, tokens above it are important (90 = top 10%); sets top_k_percent = 100 - eta; -1 = unset")
      .range(-1, 100);
  add("grouping.selection", c.grouping.selection, "Top-k within each sequence or over the whole batch")
      .one_of({"sequence", "batch"});
  // Each grouping function's own keys, declared in its file (src/grouping/*.cpp, listed in registry.cpp).
  if (with_declared) add_declared_fields(add.fields(), "grouping", c.grouping.options);
}

void loss_optim_fields(Builder& add, Config& c) {
  add("loss.objective", c.loss.objective,
      "sftgo (group max + CE), ce (plain SFT) or rho1 (CE on important tokens only)")
      .one_of({"sftgo", "ce", "rho1"});
  add("loss.lambda_schedule", c.loss.lambda_schedule, "Static lambda or linear decay from lambda_max to lambda_min")
      .one_of({"static", "linear_decay"});
  add("loss.lambda", c.loss.lambda, "Static lambda: weight of the worst-group term").range(0, 1);
  add("loss.lambda_max", c.loss.lambda_max, "Linear decay: lambda at the first step").range(0, 1);
  add("loss.lambda_min", c.loss.lambda_min, "Linear decay: lambda at the last step").range(0, 1);
  add("loss.scope", c.loss.scope,
      "Group means over the whole optimizer step (all micro-batches and ranks) or each micro-batch")
      .one_of({"step", "microbatch"});
  add("loss.step_stats", c.loss.step_stats,
      "Scope step, sftgo, several micro-batches: speculate (bet on the previous step's worst group, redo the step when it changes) or prepass (a no-grad forward of every micro-batch first); auto speculates unless LoRA dropout or groups chosen in the training forward make the two differ (docs/loss.md)")
      .one_of({"auto", "speculate", "prepass"});
  add("loss.chunk_tokens", c.loss.chunk_tokens,
      "Trained tokens per pass of the fused LM head + cross-entropy; 0 = all in one pass (vocabulary blocks are sized automatically)")
      .range(0, 1 << 24);
  add("loss.check_finite", c.loss.check_finite, "Check the loss and inputs for NaN/Inf every step");

  add("optim.name", c.optim.name,
      "Update rule (registry name): adamw; a rule that updates whole matrices cannot run with dist.zero1");
  add("optim.lr", c.optim.lr, "Peak learning rate").above(0);
  add("optim.beta1", c.optim.beta1, "AdamW beta1").range(0, 1);
  add("optim.beta2", c.optim.beta2, "AdamW beta2").range(0, 1);
  add("optim.eps", c.optim.eps, "AdamW epsilon").above(0);
  add("optim.weight_decay", c.optim.weight_decay, "Decoupled weight decay (not applied to norms and biases)")
      .at_least(0);
  add("optim.schedule", c.optim.schedule, "Learning-rate decay after warmup").one_of({"cosine", "linear", "constant"});
  add("optim.warmup_ratio", c.optim.warmup_ratio, "Warmup as a share of all optimizer steps").range(0, 1);
  add("optim.warmup_steps", c.optim.warmup_steps,
      "Warmup steps; >= 0 overrides warmup_ratio; -1 = use warmup_ratio (at most 10^9 as train.max_steps)")
      .range(-1, 1e9);
  add("optim.min_lr_ratio", c.optim.min_lr_ratio, "Final learning rate as a share of the peak").range(0, 1);
  add("optim.grad_clip", c.optim.grad_clip, "Clip the global gradient norm to this; 0 disables").at_least(0);
}

void train_fields(Builder& add, Config& c) {
  // Step counts: ceil(epochs x steps per epoch) must be an exact int64; 10^9 steps of even 10 ms is
  // 116 days, so a larger value is a typo, not a plan.
  add("train.epochs", c.train.epochs,
      "Passes over the training data (at most 10^6, so that the step count ceil(epochs x steps per epoch) stays an exact integer)")
      .above(0)
      .at_most(1e6);
  add("train.max_steps", c.train.max_steps,
      "Stop after this many optimizer steps (at most 10^9); -1 = run the epochs (0 is an error: it would train nothing)")
      .range(1, 1e9)
      .or_value(-1);
  add("train.global_batch_size", c.train.global_batch_size,
      "Examples per optimizer step over all ranks (at most 2^20: a step runs its micro-batches one after another, so 2^31 examples made a step that never ended)")
      .range(1, 1 << 20);
  add("train.micro_batch_size", c.train.micro_batch_size,
      "Examples per forward pass on one rank (at most 2^16: one forward holds micro_batch_size x max_seq_len tokens)")
      .range(1, 1 << 16);
  add("train.precision", c.train.precision,
      "Precision policy (registry name, src/train/precision.cpp): fp32; bf16 (bf16 weights and compute, fp32 master weights and AdamW state); or bf16_autocast (fp32 weights and AdamW state, forward and loss in bf16 under LibTorch autocast as torch.autocast does, backward outside it; needs model.dtype float32)");
  add("train.log_every", c.train.log_every, "Optimizer steps between metric lines").at_least(1);
  add("train.save_every", c.train.save_every, "Optimizer steps between checkpoints; 0 = only at the end").at_least(0);
  add("train.save_final", c.train.save_final,
      "Save a checkpoint when training ends; false = no final save (runs that only measure: metrics.jsonl is written as always, train.save_every's periodic saves and the save on a stop signal still happen)");
  add("train.keep_last", c.train.keep_last, "Checkpoints kept on disk").at_least(1);
  add("train.intermediate_checkpoints", c.train.intermediate_checkpoints,
      "What the periodic (train.save_every) checkpoints hold: full = weights, optimizer state and fp32 masters (about 14 bytes per parameter in bf16, 12 in fp32; any of them can be resumed); weights = the HF weights, tokenizer and adapter only (2 bytes per parameter in bf16), loadable by score, eval and transformers but refused by --resume. The final checkpoint and the one saved on a stop signal are always full (docs/operations.md)")
      .one_of({"full", "weights"});
  add("train.eval_every", c.train.eval_every,
      "Optimizer steps between eval-loss passes over data.eval_path (a fresh run also evaluates its initial "
      "weights, at step 0, and every run its final ones); 0 = only at the start and the end")
      .at_least(0);
  add("train.eval_tasks", c.train.eval_tasks,
      "Multiple-choice tasks scored at every evaluation (the tasks of sftgo-train eval, 0-shot), comma-separated "
      "TASK:PATH, e.g. hellaswag:data/eval/samples/hellaswag.jsonl; logged on the eval line as eval_TASK_METRIC "
      "(eval_hellaswag_acc, ...); needs data.eval_path; empty = none");
  add("train.eval_limit", c.train.eval_limit, "Documents of each train.eval_tasks task scored (the first N)")
      .at_least(1);
  add("train.save_best", c.train.save_best,
      "Eval metric whose best value keeps its checkpoint as checkpoints/best, never pruned by train.keep_last: "
      "eval_loss, eval_loss_ce, eval_worst_group (the larger group loss; losses: lower is better) or "
      "eval_TASK_METRIC of train.eval_tasks (higher is better); needs data.eval_path; empty = off");
  add("train.early_stopping_metric", c.train.early_stopping_metric,
      "Eval metric (as train.save_best) that ends the run after train.early_stopping_patience evaluations "
      "without an improvement larger than train.early_stopping_min_delta (exit 0, final checkpoint saved); "
      "empty = off");
  add("train.early_stopping_patience", c.train.early_stopping_patience,
      "Evaluations in a row without improvement that stop the run").at_least(1);
  add("train.early_stopping_min_delta", c.train.early_stopping_min_delta,
      "Smallest change of the early-stopping metric that counts as an improvement").at_least(0);
  add("train.deterministic", c.train.deterministic,
      "GPU only: deterministic kernels (LibTorch deterministic algorithms, cuDNN deterministic, no cuDNN benchmark, math attention instead of flash/memory-efficient SDPA, CUBLAS_WORKSPACE_CONFIG) so a run and its resume are bit-reproducible on the same GPU and software; slower, and attention needs more memory. CPU runs are deterministic anyway (docs/gpu.md)");
  add("train.gpu_peak_tflops", c.train.gpu_peak_tflops,
      "Dense bf16 peak TFLOP/s of one GPU for MFU; 0 = from the GPU's name (H100, H200, A100; other GPUs then report no MFU)")
      .at_least(0);
  add("train.max_nan_skips", c.train.max_nan_skips, "Non-finite steps skipped before saving and stopping").at_least(0);
  add("train.num_threads", c.train.num_threads,
      "CPU threads for LibTorch; 0 = its default (at most 65536: LibTorch takes an int)")
      .range(0, 65536);
}

void dist_lora_fields(Builder& add, Config& c) {
  add("dist.backend", c.dist.backend, "Process-group backend; auto = NCCL on GPU, Gloo on CPU")
      .one_of({"auto", "nccl", "gloo"});
  add("dist.master_addr", c.dist.master_addr, "Rendezvous address when MASTER_ADDR is not set");
  add("dist.master_port", c.dist.master_port, "Rendezvous port when MASTER_PORT is not set").range(1, 65535);
  add("dist.timeout_s", c.dist.timeout_s,
      "Seconds before a stuck collective or a silent rank (no heartbeat) fails the job; also bounds the wait "
      "for other ranks' grouping-cache shares (plus twice this rank's own share time)")
      .above(0);
  add("dist.zero", c.dist.zero,
      "ZeRO stage: 0 data parallel; 1 shard optimizer state and fp32 master weights across ranks; 2 also shard "
      "the fp32 gradients, reduced bucket by bucket (dist.bucket_mb) during backward; 3 also shard the weights, "
      "each layer gathered around its forward and its recomputation in backward (docs/architecture.md, ZeRO-3)")
      .range(0, 3);
  add("dist.zero1", c.dist.zero1, "Older key for dist.zero: 1 (true conflicts with dist.zero: 2)");
  add("dist.offload_optimizer", c.dist.offload_optimizer,
      "cpu: keep the fp32 master weights, the optimizer state and the gradient shard in host memory and run the "
      "update there on every core (dist.zero 2 or 3; host memory is checked at start; docs/architecture.md, "
      "Optimizer offload); none: on the device")
      .one_of({"none", "cpu"});
  add("dist.zero1_fp32_grads", c.dist.zero1_fp32_grads,
      "ZeRO-1 with bf16 weights: accumulate micro-batch gradients and reduce-scatter them in fp32 (false: in "
      "bf16, 2 bytes per parameter less memory, less precise sums)");
  add("dist.bucket_mb", c.dist.bucket_mb, "Gradient all-reduce bucket size in MiB (plain data parallel)").above(0);

  add("lora.enabled", c.lora.enabled,
      "Train LoRA adapters on a frozen base model instead of every weight (docs/lora.md)");
  add("lora.rank", c.lora.rank, "LoRA rank r (PEFT's r)").range(1, 65536);
  add("lora.alpha", c.lora.alpha,
      "LoRA alpha: the adapter output is scaled by alpha / rank (rsLoRA: alpha / sqrt(rank))")
      .above(0);
  add("lora.dropout", c.lora.dropout, "Dropout on the adapter input while training (PEFT's lora_dropout)")
      .range(0, 0.999);
  add("lora.target_modules", c.lora.target_modules,
      "Comma-separated layers that get adapters: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head (untied head only), or all-linear (all but lm_head)");
  add("lora.use_rslora", c.lora.use_rslora, "rsLoRA scaling alpha / sqrt(rank)");
  add("lora.init", c.lora.init,
      "Adapter init: default = A Kaiming-uniform, B zeros (PEFT's); gaussian = A ~ N(0, 1/rank), B zeros")
      .one_of({"default", "gaussian"});
  add("lora.adapter_path", c.lora.adapter_path,
      "Start from this PEFT adapter directory (adapter_config.json + adapter_model.safetensors); its r, targets, alpha and rsLoRA setting must match the lora section; empty = fresh init");

  add("logging.report_to", c.logging.report_to,
      "Experiment trackers fed from metrics.jsonl by rank 0's follower process, a list such as [tensorboard, "
      "wandb, mlflow] (or comma-separated; docs/tracking.md); empty = none. A tracker that fails is reported "
      "once and never stops training")
      .names_list();
  add("logging.python", c.logging.python,
      "Python that runs the tracker follower (scripts/sftgo_track.py); empty = the repository's .venv/bin/python "
      "next to the binary, else python3 on PATH");
}

}  // namespace

std::vector<Field> fields_of(Config& c, bool with_declared) {
  std::vector<Field> f;
  f.reserve(96);
  Builder add(f);
  run_model_fields(add, c);
  data_grouping_fields(add, c, with_declared);
  loss_optim_fields(add, c);
  train_fields(add, c);
  dist_lora_fields(add, c);
  return f;
}

void add_declared_fields(std::vector<Field>& fields, const std::string& section, OptionValues& values) {
  for (const auto& group : declared_options(section)) {
    for (const auto& spec : group.options) {
      const bool given = values.has(spec.key);
      OptionValue& v = values.slot(spec.key);
      if (!given) v = spec.default_value;
      SFTGO_CHECK(v.index() == spec.default_value.index(), ErrorKind::kInternal, section, ".", spec.key,
                  " holds a value of another type than its declared default (", group.owner, ")");
      FieldPtr ptr = std::visit([](auto& x) -> FieldPtr { return &x; }, v);
      fields.push_back(Field{section + "." + spec.key, ptr, spec.doc, spec.min, spec.max, spec.min_exclusive,
                             spec.choices, {}, {}});
    }
  }
}

const char* type_name(const FieldPtr& ptr) {
  struct V {
    const char* operator()(bool*) const { return "bool"; }
    const char* operator()(int64_t*) const { return "int"; }
    const char* operator()(double*) const { return "float"; }
    const char* operator()(std::string*) const { return "string"; }
  };
  return std::visit(V{}, ptr);
}

std::string value_string(const FieldPtr& ptr) {
  struct V {
    std::string operator()(bool* p) const { return *p ? "true" : "false"; }
    std::string operator()(int64_t* p) const { return std::to_string(*p); }
    std::string operator()(double* p) const {
      // Shortest text that reads back to the same double.
      char buf[64];
      for (int prec = 6; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof buf, "%.*g", prec, *p);
        if (std::strtod(buf, nullptr) == *p) break;
      }
      std::string s = buf;
      if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
      return s;
    }
    std::string operator()(std::string* p) const { return *p; }
  };
  return std::visit(V{}, ptr);
}

}  // namespace sftgo::config_detail
