// The Trainer's set-up chain: placement (ranks, device, process group) -> data -> groups -> model ->
// held-out set -> loader, updater and schedule.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <optional>
#include <unistd.h>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/timer.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/core/version.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/loader.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/gpu.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/core/format.h"
#include "sftgo/model/score.h"
#include "sftgo/model/lora.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"
#include "sftgo/train/updater.h"
#include "trainer_impl.h"

namespace fs = std::filesystem;

namespace sftgo::train {
namespace {

// train.deterministic on a GPU: the nondeterministic kernels are atomics-based reductions (scatter/index
// add, cuBLAS split-K without a fixed workspace) and the flash / memory-efficient attention backward;
// the math attention path is deterministic. (CPU kernels are deterministic already and stay as they are.)
void use_deterministic_gpu_kernels() {
  auto& ctx = at::globalContext();
  ctx.setDeterministicAlgorithms(true, /*warn_only=*/true);  // warn, not fail, on an op without one
  ctx.setDeterministicCuDNN(true);
  ctx.setBenchmarkCuDNN(false);
  ctx.setSDPUseFlash(false);
  ctx.setSDPUseMemEfficient(false);
  ctx.setSDPUseCuDNN(false);
  ctx.setSDPUseMath(true);
  log_info("train.deterministic: deterministic GPU kernels, math attention");
}

// This rank's place in the sharded preparation of grouping caches (grouping/shard.h). The ranks wait
// for each other's part files, not in a collective; a dead peer still ends the job through the
// watchdog (no heartbeat for dist.timeout_s), a live one that is too slow after wait_timeout_s plus
// twice this rank's own share time.
grouping::ShardJob shard_job(int rank, int world, const Config& cfg) {
  grouping::ShardJob job;
  job.rank = rank;
  job.world_size = world;
  job.wait_timeout_s = cfg.dist.timeout_s;
  return job;
}

}  // namespace

// ---- Set-up -----------------------------------------------------------------------------------

void Trainer::Impl::setup() {
  Timer t;
  place_job();
  // The precision policy, decided once here; it refuses a model.dtype it cannot train (before any data work).
  precision = make_precision_policy(cfg.train.precision);
  weight_dtype = precision->weight_dtype(parse_dtype(cfg.model.dtype, "model.dtype"));
  lambdas = lambda_schedule(cfg);
  SFTGO_CHECK(cfg.train.eval_every == 0 || !cfg.data.eval_path.empty(), ErrorKind::kConfig,
              "train.eval_every is set but data.eval_path is empty: name the held-out data file");
  objective = loss::parse_objective(cfg.loss.objective);
  scope = loss::parse_stats_scope(cfg.loss.scope);

  load_data();
  prepare_groups();
  build_model();
  if (dynamic) prepare_dynamic(dataset.examples, "training data");
  if (!cfg.data.eval_path.empty()) prepare_eval();
  choose_weights_policy();

  per_rank_batch = cfg.train.global_batch_size / world;
  loader = std::make_unique<data::DataLoader>(dataset, loader_options());
  steps_per_epoch = (loader->examples_per_epoch() + per_rank_batch - 1) / per_rank_batch;
  total_steps =
      cfg.train.max_steps > 0
          ? cfg.train.max_steps
          : std::max<int64_t>(
                1, static_cast<int64_t>(std::ceil(cfg.train.epochs * static_cast<double>(steps_per_epoch) - 1e-9)));
  build_updater();
  schedule.peak_lr = cfg.optim.lr;
  schedule.total_steps = total_steps;
  schedule.warmup_steps = optim::resolve_warmup_steps(cfg.optim.warmup_steps, cfg.optim.warmup_ratio, total_steps);
  schedule.decay = optim::parse_lr_decay(cfg.optim.schedule);
  schedule.min_lr_ratio = cfg.optim.min_lr_ratio;
  log_info("setup in {:.1f}s: {} optimizer steps ({} per epoch, {} micro-batches of {} per step), device {}",
           t.seconds(), total_steps, steps_per_epoch, per_rank_batch / cfg.train.micro_batch_size,
           cfg.train.micro_batch_size, device.str());
}

// Ranks, threads, seed, device and the process group.
void Trainer::Impl::place_job() {
  launch = dist::detect_launch(cfg.dist.master_addr, static_cast<int>(cfg.dist.master_port));
  rank = launch.rank;
  world = launch.world_size;
  if (world > 1) init_logging(rank, world, parse_log_level(cfg.run.log_level));
  if (cfg.train.num_threads > 0) torch::set_num_threads(static_cast<int>(cfg.train.num_threads));
  // The same seed on every rank: identical initial weights without a broadcast.
  torch::manual_seed(static_cast<uint64_t>(cfg.run.seed));
  // cuBLAS reads its workspace setting when it starts: set it before the first CUDA call.
  if (cfg.train.deterministic) ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  // The rank's own GPU becomes the current CUDA device before any CUDA or NCCL call.
  device = dist::bind_rank_device(launch, cfg.model.device);
  if (cfg.train.deterministic && device.is_cuda()) use_deterministic_gpu_kernels();
  loss::check_device_supported(device);  // a build without CUDA kernels stops here, not at the first loss
  SFTGO_CHECK_HINT(cfg.train.global_batch_size % (world * cfg.train.micro_batch_size) == 0, ErrorKind::kConfig,
                   "make train.global_batch_size a multiple of world size x train.micro_batch_size",
                   "train.global_batch_size ", cfg.train.global_batch_size, " does not split into ", world, " ranks x ",
                   "micro-batches of ", cfg.train.micro_batch_size,
                   " (every rank must run the same number of micro-steps)");
  dist::CommOptions co;
  co.backend = cfg.dist.backend;
  co.timeout_s = cfg.dist.timeout_s;
  comm = dist::Comm::create(launch, co, device);
  comm->start_watchdog();
  if (world > 1)
    log_info("data parallel: {} ranks ({}), {} backend, rendezvous {}:{}, ZeRO stage {}", world, launch.launcher,
             comm->backend(), launch.master_addr, launch.master_port, zero_stage(cfg.dist));
}

void Trainer::Impl::load_data() {
  tok.emplace(Tokenizer::load(cfg.tokenizer.path));
  pad_id = tok->pad_id().value_or(tok->eos_id().value_or(0));
  dataset = data::prepare_dataset(data_options(cfg), *tok);
  const auto& st = dataset.stats;
  SFTGO_CHECK(!dataset.examples.empty(), ErrorKind::kData, cfg.data.path, ": no trainable examples (", st.records,
              " records, ", st.dropped_too_long, " too long, ", st.dropped_no_trained, " without response tokens)");
  log_info("data {}: {} examples, {} tokens ({} trained), {} truncated, {} dropped{}", cfg.data.path, st.examples,
           st.tokens, st.trained_tokens, st.truncated, st.dropped_too_long + st.dropped_no_trained,
           dataset.from_cache ? " (from cache)" : "");
}

// Static functions group the whole dataset now (through the on-disk cache: with several ranks, each
// computes a share and the shares are merged); dynamic ones are kept and choose groups at every step.
void Trainer::Impl::prepare_groups() {
  if (cfg.grouping.function == "none") {
    SFTGO_CHECK(objective == loss::Objective::kCe, ErrorKind::kConfig, "loss.objective '", cfg.loss.objective,
                "' needs grouping.function other than none");
    return;
  }
  const grouping::GroupingOptions g = grouping_options(cfg);
  grouping_fn = grouping::make_grouping_function(g, &*tok);  // validates the name and options early
  dynamic = grouping::as_dynamic(*grouping_fn);
  if (dynamic) return;
  grouping_fn.reset();  // the pipeline builds its own (and loads a classifier only on a cache miss)
  SFTGO_CHECK(cfg.grouping.selection == "sequence", ErrorKind::kConfig,
              "grouping.selection 'batch' is only supported by dynamic functions (rho1) so far; use 'sequence'");
  auto out = grouping::apply_grouping(dataset.examples, g, &*tok, /*keep_scores=*/false, shard_job(rank, world, cfg));
  std::vector<std::vector<uint8_t>> masks;
  masks.reserve(dataset.examples.size());
  for (const auto& ex : dataset.examples) masks.push_back(ex.groups);
  auto share = grouping::group_share(dataset.examples, masks);
  log_info("grouping {}: {:.1f}% of {} trained tokens important (k = {}%), {:.2f}s{}", g.function,
           100.0 * share.overall, share.trained_tokens, g.top_k_percent, out.seconds, out.from_cache ? " (cache)" : "");
}

// lora.enabled: adapters on the targeted projections (fp32), every base weight frozen; the updater then
// sees only the adapters (docs/lora.md).
void Trainer::Impl::add_lora_adapters() {
  model::LoraOptions lo;
  lo.rank = cfg.lora.rank;
  lo.alpha = cfg.lora.alpha;
  lo.dropout = cfg.lora.dropout;
  lo.target_modules = model::parse_lora_target_modules(cfg.lora.target_modules);
  lo.use_rslora = cfg.lora.use_rslora;
  lo.init = cfg.lora.init;
  lo.base_model_name_or_path = cfg.model.path;
  model::apply_lora(*model, lo, static_cast<uint64_t>(cfg.run.seed));
  if (!cfg.lora.adapter_path.empty()) model::load_lora_adapter(*model, cfg.lora.adapter_path);
  int64_t n = 0;
  for (const auto& [name, p] : model::lora_named_parameters(*model)) n += p.numel();
  log_info("LoRA: rank {}, alpha {}, targets {}: {:.2f}M trainable parameters{}", lo.rank, lo.alpha,
           cfg.lora.target_modules, static_cast<double>(n) / 1e6,
           cfg.lora.adapter_path.empty() ? "" : ", from " + cfg.lora.adapter_path);
}

void Trainer::Impl::prepare_dynamic(std::vector<data::TokenizedExample>& examples, const std::string& what) {
  grouping::PrepareContext ctx;
  ctx.device = device;
  ctx.dtype = model->dtype();
  ctx.vocab_size = model->config().vocab_size;
  ctx.cache_dir = cfg.data.cache_dir;
  ctx.what = what;
  ctx.shard = shard_job(rank, world, cfg);
  if (model::has_lora(*model)) {
    // The frozen base model (adapters off) can serve as the reference: no second model in memory.
    ctx.base_model_identity =
        cfg.model.path.empty() ? sftgo::format("random-init:seed={}", cfg.run.seed) : "dir:" + cfg.model.path;
    ctx.base_model_logprobs = [this](const std::vector<std::vector<int64_t>>& seqs) {
      torch::NoGradGuard no_grad;
      model::set_lora_disabled(*model, true);
      auto out = model::score_logprobs(*model, seqs);
      model::set_lora_disabled(*model, false);
      return out;
    };
  }
  dynamic->prepare(examples, ctx);
}

void Trainer::Impl::build_model() {
  model::ModelOptions mo;
  mo.dtype = weight_dtype;  // the policy's (bf16 computes in bf16; its fp32 copies live with the updater)
  mo.device = device;
  mo.seed = static_cast<uint64_t>(cfg.run.seed);
  mo.activation_checkpointing = cfg.model.activation_checkpointing;
  // ZeRO-3 of every weight: no rank builds the whole model; the optimizer reads each tensor once and
  // keeps its shard (LoRA's frozen base is not sharded, so it is built and loaded as usual).
  mo.defer_storage = zero_stage(cfg.dist) == 3 && !cfg.lora.enabled;
  if (!cfg.model.path.empty()) {
    model = model::load_pretrained(cfg.model.path, mo);
  } else {
    model::LlamaConfig c = preset_shape(cfg);
    c.initializer_range = cfg.model.init_std;
    // Special ids come from the tokenizer actually used, so saved checkpoints generate correctly.
    if (auto bos = tok->bos_id()) c.bos_token_id = *bos;
    if (auto eos = tok->eos_id()) c.eos_token_ids = {*eos};
    c.validate("model config");
    model = model::LlamaModel(c, mo);
  }
  model->set_activation_checkpointing(cfg.model.activation_checkpointing);
  if (mo.defer_storage) initial_weights = model::weight_source(*model, mo, cfg.model.path);
  if (cfg.lora.enabled) add_lora_adapters();
  SFTGO_CHECK(tok->vocab_size() <= model->config().vocab_size, ErrorKind::kConfig, "the tokenizer has ",
              tok->vocab_size(), " ids but the model's vocabulary is ", model->config().vocab_size);
  n_params = 0;
  for (const auto& [name, p] : model->hf_named_parameters()) n_params += p.numel();
  if (device.is_cuda()) {
    gpu_peak = dist::gpu_peak(device, cfg.train.gpu_peak_tflops * 1e12);
    if (gpu_peak.flops > 0)
      log_info("MFU against {:.0f} TFLOP/s dense bf16 ({})", gpu_peak.flops / 1e12, gpu_peak.source);
    else
      log_warn("GPU '{}' is not in the peak-FLOPs table: set train.gpu_peak_tflops for MFU", gpu_peak.name);
  }
  const std::string summary = precision->summary();
  log_info("model: {} layers, hidden {}, {:.1f}M parameters, {} on {}{}", model->config().num_hidden_layers,
           model->config().hidden_size, static_cast<double>(n_params) / 1e6, dtype_name(model->dtype()), device.str(),
           summary.empty() ? "" : " (" + summary + ")");
}

// The held-out set goes through the same template and grouping as the training data. A function that
// learns corpus statistics (TF-IDF, frequency) is fitted on the TRAINING corpus and only scores the
// held-out examples, as a trained model would see them; a dynamic one prepares the held-out set too.
void Trainer::Impl::prepare_eval() {
  data::DataOptions eo = data_options(cfg);
  eo.path = cfg.data.eval_path;
  eval_set = data::prepare_dataset(eo, *tok);
  SFTGO_CHECK(!eval_set.examples.empty(), ErrorKind::kData, cfg.data.eval_path, ": no trainable examples");
  if (dynamic) {
    prepare_dynamic(eval_set.examples, "held-out data");
  } else if (cfg.grouping.function != "none") {
    const grouping::GroupingOptions g = grouping_options(cfg);
    auto fn = grouping::make_grouping_function(g, &*tok);
    if (fn->requirements().corpus_statistics) {
      auto& scorer = grouping::as_static(*fn, "held-out groups");
      scorer.fit(dataset.examples);
      for (auto& ex : eval_set.examples) ex.groups = scorer.groups(ex, scorer.score(ex), g.top_k_percent);
    } else {
      fn.reset();
      grouping::apply_grouping(eval_set.examples, g, &*tok, /*keep_scores=*/false, shard_job(rank, world, cfg));
    }
  }
  log_info("eval data {}: {} examples, {} trained tokens", cfg.data.eval_path, eval_set.stats.examples,
           eval_set.stats.trained_tokens);
}

// The loader of this rank. On a GPU sequence lengths are rounded up to a multiple of 64, so attention
// and GEMM shapes repeat across steps (kernel selection and the caching allocator reuse them); the padding
// is masked like any other and changes no number but the cost.
data::LoaderOptions Trainer::Impl::loader_options() const {
  data::LoaderOptions lo = data::loader_options(data_options(cfg), pad_id, rank, world);
  if (device.is_cuda()) lo.pad_to_multiple = data::kGpuPadMultiple;
  return lo;
}

void Trainer::Impl::build_updater() {
  UpdaterOptions uo;
  uo.rule = optim::rule_options(cfg.optim);
  uo.bucket_mb = cfg.dist.bucket_mb;
  uo.zero1_fp32_grads = cfg.dist.zero1_fp32_grads;
  uo.offload_optimizer = cfg.dist.offload_optimizer == "cpu";
  uo.local_ranks = launch.local_size;
  uo.initial_values = std::move(initial_weights);  // read once, into the shards
  // The trained parameters (LoRA: the fp32 adapters, so bf16 needs no masters for them) and the policy's
  // choice of Updater for them.
  updater = precision->make_updater({comm, model::trained_named_parameters(*model), uo, zero_stage(cfg.dist)});
}

}  // namespace sftgo::train
