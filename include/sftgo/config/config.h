// Typed configuration of a training run. The only code that reads YAML lives in src/config/;
// every other module receives plain values from the trainer.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sftgo/config/options.h"

namespace sftgo {

struct RunConfig {
  std::string name = "run";
  std::string output_dir = "runs/run";  // checkpoints, metrics.jsonl, resolved config
  int64_t seed = 1234;
  std::string log_level = "info";
};

struct TokenizerConfig {
  std::string path = "../shared/data/llama3";  // directory with tokenizer.json or the file itself
};

struct ModelConfig {
  std::string preset = "tiny";  // tiny | llama3.2-1b | llama3.2-3b | llama3.1-8b | llama3.1-70b
  std::string path;             // HF checkpoint directory to load; empty = random init from preset
  std::string dtype = "float32";
  std::string device = "auto";  // auto | cpu | cuda
  bool activation_checkpointing = false;
  // Shape overrides for the preset (-1 keeps the preset's value); used by tiny demo models.
  int64_t hidden_size = -1;
  int64_t intermediate_size = -1;
  int64_t num_layers = -1;
  int64_t num_heads = -1;
  int64_t num_kv_heads = -1;
  int64_t vocab_size = -1;  // e.g. a small vocabulary for the shipped demo tokenizer
  double init_std = 0.02;
};

struct DataConfig {
  std::string path = "data/demo/demo_sft.jsonl";
  std::string format = "auto";           // auto | lima | alpaca | chat
  std::string template_name = "llama3";  // YAML key: data.template
  std::string system_prompt;
  int64_t max_seq_len = 4096;
  std::string truncation = "truncate";  // truncate (the response) | drop (the example)
  std::string on_bad_record = "stop";   // stop | skip
  bool packing = false;
  std::string cache_dir = ".cache/sftgo";
  std::string eval_path;
};

struct GroupingConfig {
  std::string function = "tfidf";      // a registered grouping function (grouping/registry.cpp)
  double top_k_percent = 30.0;         // share of a sequence's trained tokens marked important (= 100 - η)
  double eta_percentile = -1.0;        // the paper's η, a percentile: top (100 - η)% important; -1 = unset
  std::string selection = "sequence";  // sequence | batch (top-k within each sequence or the batch)
  // Each function's own keys (grouping.tfidf_sublinear_tf, grouping.rho1_reference_model, ...), declared
  // by the function's code (config/options.h) and read back by it. Loading fills in every declared key
  // (its default when not given); a Config built in code may hold only some (the function then uses
  // its defaults for the rest).
  OptionValues options;
};

struct LossConfig {
  std::string objective = "sftgo";         // sftgo | ce | rho1
  std::string lambda_schedule = "static";  // static | linear_decay
  double lambda = 0.9;                     // static λ
  double lambda_max = 0.9;                 // linear_decay: λ at step 0
  double lambda_min = 0.1;                 // linear_decay: λ at the last step
  std::string scope = "step";              // step | microbatch: over what the group means are taken
  std::string step_stats = "auto";         // auto | speculate | prepass: how scope step learns its means
  int64_t chunk_tokens = 0;                // trained tokens per pass of the fused LM head + CE; 0 = all
  bool check_finite = true;
};

struct OptimConfig {
  std::string name = "adamw";  // update rule (optim registry name)
  double lr = 1e-5;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  std::string schedule = "cosine";  // cosine | linear | constant
  double warmup_ratio = 0.0;
  int64_t warmup_steps = -1;  // >= 0 overrides warmup_ratio
  double min_lr_ratio = 0.0;
  double grad_clip = 1.0;  // global-norm clip; 0 disables
};

struct TrainConfig {
  double epochs = 1.0;
  int64_t max_steps = -1;          // > 0 caps the optimizer steps
  int64_t global_batch_size = 64;  // examples per optimizer step over all ranks
  int64_t micro_batch_size = 1;    // examples per forward on one rank
  std::string precision = "fp32";  // fp32 | bf16 (bf16 weights with fp32 master copy) | bf16_autocast
  int64_t log_every = 1;
  int64_t save_every = 0;  // optimizer steps between checkpoints; 0 = only at the end
  bool save_final = true;  // false: no checkpoint when training ends (a stop request still saves)
  int64_t keep_last = 2;
  std::string intermediate_checkpoints = "full";  // full | weights (no optimizer state: not resumable)
  int64_t eval_every = 0;
  // Evaluation during training (docs/operations.md, "Best checkpoint and early stopping").
  std::string eval_tasks;                 // comma-separated TASK:PATH multiple-choice tasks; empty = none
  int64_t eval_limit = 100;               // first N documents of each task
  std::string save_best;                  // metric whose best eval keeps checkpoints/best; empty = off
  std::string early_stopping_metric;      // empty = no early stopping
  int64_t early_stopping_patience = 3;    // evaluations without improvement before stopping
  double early_stopping_min_delta = 0.0;  // an improvement must exceed this
  int64_t max_nan_skips = 3;
  bool deterministic = false;  // GPU: deterministic kernels (math attention), bit-reproducible steps
  double gpu_peak_tflops = 0;  // MFU denominator when the GPU is not in the built-in table; 0 = by name
  int64_t num_threads = 0;     // CPU threads for LibTorch; 0 = its default
};

struct DistConfig {
  std::string backend = "auto";  // auto | nccl | gloo
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  double timeout_s = 600.0;
  int64_t zero = 0;    // ZeRO stage: 0 (data parallel), 1 (optimizer state), 2 (gradients), 3 (weights)
  bool zero1 = false;  // the older key: true means zero: 1
  // none | cpu: the fp32 masters, the rule's state and the gradient shard live in host memory and the update
  // runs there (stages 2 and 3; see validate_config).
  std::string offload_optimizer = "none";
  bool zero1_fp32_grads = true;  // ZeRO-1 with bf16 weights: accumulate and reduce-scatter gradients in fp32
  double bucket_mb = 25.0;       // gradient all-reduce bucket size
};

// The ZeRO stage dist.zero and dist.zero1 give together: dist.zero1: true means stage 1 (and conflicts
// with dist.zero: 2, an Error(kConfig) naming both keys).
int zero_stage(const DistConfig& dist);

// LoRA adapters (docs/lora.md, model/lora.h): the base model is frozen and only the adapters train.
struct LoraConfig {
  bool enabled = false;
  int64_t rank = 16;
  double alpha = 32.0;   // scaling alpha / rank (rsLoRA: alpha / sqrt(rank))
  double dropout = 0.0;  // on the adapter input (PEFT's lora_dropout)
  // Comma-separated: any of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head, or all-linear.
  std::string target_modules = "all-linear";
  bool use_rslora = false;
  std::string init = "default";  // default (A Kaiming-uniform, B zeros, as PEFT) | gaussian
  std::string adapter_path;      // start from an existing PEFT adapter directory instead of init
};

// Experiment trackers fed from metrics.jsonl by a follower process (docs/tracking.md).
struct LoggingConfig {
  std::string report_to;  // comma-separated: tensorboard, wandb, mlflow; empty = none
  std::string python;     // interpreter of the follower; empty = the repo's .venv/bin/python, else python3
};

struct Config {
  RunConfig run;
  TokenizerConfig tokenizer;
  ModelConfig model;
  DataConfig data;
  GroupingConfig grouping;
  LossConfig loss;
  OptimConfig optim;
  TrainConfig train;
  DistConfig dist;
  LoraConfig lora;
  LoggingConfig logging;
};

// Where a value came from, for the start-up table and error messages.
struct ValueOrigin {
  std::string source = "default";  // "default", "FILE:LINE" or "--set"
};

struct LoadedConfig {
  Config config;
  std::map<std::string, ValueOrigin> origins;  // key -> origin, for every field
  std::string source_path;                     // the YAML file, "" when none
};

// Reads `path` (may be empty for all defaults), applies `overrides` ("key.sub=value", in order),
// validates, and returns the result. Throws sftgo::Error(kConfig) naming file, line and key.
LoadedConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text as if read from `source_name` (tests and embedded configs).
LoadedConfig load_config_text(const std::string& yaml_text, const std::string& source_name,
                              const std::vector<std::string>& overrides = {});
// Cross-field checks (ranges are checked per field while loading).
void validate_config(const Config& config);

// The resolved config as YAML (written next to outputs; loads back to the same Config).
std::string config_to_yaml(const Config& config);
// A fixed-width table of every key, value and origin, for the start-up log.
std::string config_table(const LoadedConfig& loaded);
// Markdown reference of every key (docs/config.md is generated from this and tested to match).
std::string config_reference_markdown();
// Every valid dotted key, in declaration order.
std::vector<std::string> config_keys();
// What differs between a config saved with a checkpoint (config_to_yaml text) and `now`, one
// "key: old -> new" line per key, in declaration order. Keys that cannot change what is trained
// (logging, checkpoint cadence, cache and rendezvous settings) and keys the saved text lacks (added
// to sftgo since) are left out. A saved text that is not such YAML gives one line saying so.
std::vector<std::string> config_changes(const std::string& saved_yaml, const Config& now);

}  // namespace sftgo
