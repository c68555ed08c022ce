// The Trainer: set-up chain, the step pipeline, evaluation, save and resume. Strategies live behind
// interfaces (Updater for how gradients become an update, DynamicGroupingFunction for groups chosen
// per step, the WeightsPlan for how the loss coefficients are decided); this file only strings them
// together. See docs/architecture.md, "One training step".
#include "sftgo/train/trainer.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <unistd.h>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/timer.h"
#include "sftgo/core/version.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/loader.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/zero.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/autocast.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"
#include "sftgo/train/updater.h"
#include "step.h"

namespace fs = std::filesystem;

namespace sftgo::train {
namespace {

// Dense bf16 peak of one H100 SXM, for MFU (the GPUs this project targets).
constexpr double kH100PeakBf16Flops = 989e12;

// One GPU per rank: the launcher's local rank picks it.
c10::Device resolve_device(const std::string& name, int local_rank) {
  if (name == "cpu") return c10::kCPU;
  const bool cuda = torch::cuda::is_available();
  if (name == "cuda")
    SFTGO_CHECK_HINT(cuda, ErrorKind::kConfig, "use model.device: cpu or auto",
                     "model.device is cuda but no CUDA device is available");
  if (!cuda) return c10::kCPU;
  const int n = static_cast<int>(torch::cuda::device_count());
  SFTGO_CHECK_HINT(local_rank < n, ErrorKind::kDist, "start at most one rank per GPU on each node", "local rank ",
                   local_rank, " has no GPU of its own (", n, " visible)");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

// The tokenizer directory's files, copied into every checkpoint so it loads as a HF model dir.
std::vector<std::string> tokenizer_files(const std::string& path) {
  fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  return {(dir / "tokenizer.json").string(), (dir / "tokenizer_config.json").string()};
}

UpdaterKind updater_kind(const Config& cfg, Precision precision) {
  if (cfg.dist.zero1) return UpdaterKind::kZero1;
  return precision == Precision::kBf16 ? UpdaterKind::kFp32Masters : UpdaterKind::kPlain;
}

}  // namespace

struct Trainer::Impl {
  LoadedConfig loaded;
  const Config& cfg;
  TrainerHooks hooks;

  // Placement: one process per rank, one device per process.
  c10::Device device{c10::kCPU};
  dist::LaunchEnv launch;
  std::shared_ptr<dist::Comm> comm;  // world 1: every collective is the identity
  int rank = 0, world = 1;
  bool stop_all = false;  // some rank was asked to stop: every rank saves and stops

  // The config, decided once at its boundary.
  loss::Objective objective = loss::Objective::kSftGo;
  loss::StatsScope scope = loss::StatsScope::kStep;
  Precision precision = Precision::kFp32;
  LambdaSchedule lambdas;
  optim::LrSchedule schedule;

  // Components.
  std::optional<Tokenizer> tok;
  data::PreparedDataset dataset;
  data::PreparedDataset eval_set;  // data.eval_path; empty when none
  std::unique_ptr<data::DataLoader> loader;
  std::unique_ptr<grouping::GroupingFunction> grouping_fn;  // kept only when dynamic
  grouping::DynamicGroupingFunction* dynamic = nullptr;     // groups chosen per step, or null
  model::LlamaModel model{nullptr};
  std::unique_ptr<Updater> updater;
  int64_t per_rank_batch = 1, steps_per_epoch = 1, total_steps = 1, n_params = 0;
  int32_t pad_id = 0;

  // Progress, saved in checkpoints.
  int64_t step = 0;
  int64_t nan_skips = 0;  // consecutive skipped steps
  int64_t tokens_seen = 0;
  double elapsed_before = 0;

  Impl(LoadedConfig l, TrainerHooks h) : loaded(std::move(l)), cfg(loaded.config), hooks(std::move(h)) {}

  // Set-up chain.
  void setup();
  void place_job();
  void load_data();
  void prepare_groups();
  void build_model();
  void prepare_dynamic(std::vector<data::TokenizedExample>& examples, const std::string& what);
  void prepare_eval();
  void build_updater();

  // The step pipeline.
  StepMetrics train_step();
  std::vector<MicroBatch> assemble_step();
  struct StepWeights {
    WeightsPlan plan = WeightsPlan::kOwnForward;
    std::optional<loss::LossWeights> fixed;  // known before the step's forwards
    bool finite = true;                      // the stats pre-pass stayed finite on every rank
    double micro_scale = 1.0;                // microbatch scope: each micro-batch of each rank counts 1/(M*W)
  };
  StepWeights decide_weights(std::vector<MicroBatch>& micro, double lambda);
  loss::GroupStats stats_pre_pass(std::vector<MicroBatch>& micro, double lambda, bool* finite);
  StepTotals forward_backward(std::vector<MicroBatch>& micro, const StepWeights& w, double lambda,
                              std::optional<loss::LossWeights>* applied);
  StepMetrics step_metrics(const std::vector<MicroBatch>& micro, const StepWeights& w, const StepTotals& t,
                           const std::optional<loss::LossWeights>& applied, double lambda, double lr);

  // Forward pieces.
  void choose_groups_before_forward(MicroBatch& b);
  loss::FusedLossOptions loss_options(double lambda, MicroBatch& b);
  at::Tensor forward_hidden(const MicroBatch& b);  // [T,H] hidden states of trained positions
  at::Tensor head_weight() const;                  // [V,H]

  EvalMetrics evaluate();
  std::string save(const std::string& why);
  void resume_from(const std::string& dir);
};

// ---- Set-up -----------------------------------------------------------------------------------

void Trainer::Impl::setup() {
  Timer t;
  place_job();
  precision = parse_precision(cfg.train.precision);
  lambdas = lambda_schedule(cfg);
  SFTGO_CHECK_HINT(precision != Precision::kBf16Autocast || cfg.model.dtype == "float32", ErrorKind::kConfig,
                   "set model.dtype: float32, or use train.precision: bf16 for bf16 weights",
                   "train.precision bf16_autocast keeps fp32 weights (autocast casts them per op) but model.dtype is ",
                   cfg.model.dtype);
  SFTGO_CHECK(cfg.train.eval_every == 0 || !cfg.data.eval_path.empty(), ErrorKind::kConfig,
              "train.eval_every is set but data.eval_path is empty: name the held-out data file");
  objective = loss::parse_objective(cfg.loss.objective);
  scope = loss::parse_stats_scope(cfg.loss.scope);

  load_data();
  prepare_groups();
  build_model();
  if (dynamic) prepare_dynamic(dataset.examples, "training data");
  if (!cfg.data.eval_path.empty()) prepare_eval();

  per_rank_batch = cfg.train.global_batch_size / world;
  loader = std::make_unique<data::DataLoader>(dataset, data::loader_options(data_options(cfg), pad_id, rank, world));
  steps_per_epoch = (loader->examples_per_epoch() + per_rank_batch - 1) / per_rank_batch;
  total_steps = cfg.train.max_steps > 0
                    ? cfg.train.max_steps
                    : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cfg.train.epochs * static_cast<double>(steps_per_epoch) - 1e-9)));
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
  device = resolve_device(cfg.model.device, world > 1 ? launch.local_rank : 0);
  SFTGO_CHECK_HINT(cfg.train.global_batch_size % (world * cfg.train.micro_batch_size) == 0, ErrorKind::kConfig,
                   "make train.global_batch_size a multiple of world size x train.micro_batch_size",
                   "train.global_batch_size ", cfg.train.global_batch_size, " does not split into ", world, " ranks x ",
                   "micro-batches of ", cfg.train.micro_batch_size, " (every rank must run the same number of micro-steps)");
  dist::CommOptions co;
  co.backend = cfg.dist.backend;
  co.timeout_s = cfg.dist.timeout_s;
  comm = dist::Comm::create(launch, co, device);
  comm->start_watchdog();
  if (world > 1)
    log_info("data parallel: {} ranks ({}), {} backend, rendezvous {}:{}, ZeRO-1 {}", world, launch.launcher,
             comm->backend(), launch.master_addr, launch.master_port, cfg.dist.zero1 ? "on" : "off");
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

// Static functions group the whole dataset now (through the on-disk cache: with several ranks, rank 0
// computes it and the others read it); dynamic ones are kept and choose groups at every step.
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
  const bool shared_cache = world > 1 && !g.cache_dir.empty();
  if (shared_cache && rank != 0) comm->barrier();  // rank 0 writes the cache first
  auto out = grouping::apply_grouping(dataset.examples, g, &*tok);
  if (shared_cache && rank == 0) comm->barrier();
  std::vector<std::vector<uint8_t>> masks;
  masks.reserve(dataset.examples.size());
  for (const auto& ex : dataset.examples) masks.push_back(ex.groups);
  auto share = grouping::group_share(dataset.examples, masks);
  log_info("grouping {}: {:.1f}% of {} trained tokens important (k = {}%), {:.2f}s{}", g.function,
           100.0 * share.overall, share.trained_tokens, g.top_k_percent, out.seconds, out.from_cache ? " (cache)" : "");
}

void Trainer::Impl::prepare_dynamic(std::vector<data::TokenizedExample>& examples, const std::string& what) {
  grouping::PrepareContext ctx;
  ctx.device = device;
  ctx.dtype = model->dtype();
  ctx.vocab_size = model->config().vocab_size;
  ctx.cache_dir = cfg.data.cache_dir;
  ctx.what = what;
  ctx.rank = rank;
  ctx.world_size = world;
  if (world > 1) ctx.barrier = [this] { comm->barrier(); };
  dynamic->prepare(examples, ctx);
}

void Trainer::Impl::build_model() {
  model::ModelOptions mo;
  // precision bf16 always computes in bf16; the fp32 copies live with the optimizer.
  mo.dtype = (cfg.model.dtype == "bfloat16" || precision == Precision::kBf16) ? c10::kBFloat16 : c10::kFloat;
  mo.device = device;
  mo.seed = static_cast<uint64_t>(cfg.run.seed);
  mo.activation_checkpointing = cfg.model.activation_checkpointing;
  if (!cfg.model.path.empty()) {
    model = model::load_pretrained(cfg.model.path, mo);
  } else {
    auto c = model::LlamaConfig::preset(cfg.model.preset);
    auto set = [](int64_t& field, int64_t v) { if (v > 0) field = v; };
    set(c.hidden_size, cfg.model.hidden_size);
    set(c.intermediate_size, cfg.model.intermediate_size);
    set(c.num_hidden_layers, cfg.model.num_layers);
    set(c.num_attention_heads, cfg.model.num_heads);
    set(c.num_key_value_heads, cfg.model.num_kv_heads);
    set(c.vocab_size, cfg.model.vocab_size);
    c.head_dim = c.hidden_size / c.num_attention_heads;
    c.initializer_range = cfg.model.init_std;
    // Special ids come from the tokenizer actually used, so saved checkpoints generate correctly.
    if (auto bos = tok->bos_id()) c.bos_token_id = *bos;
    if (auto eos = tok->eos_id()) c.eos_token_ids = {*eos};
    c.validate("model config");
    model = model::LlamaModel(c, mo);
  }
  model->set_activation_checkpointing(cfg.model.activation_checkpointing);
  SFTGO_CHECK(tok->vocab_size() <= model->config().vocab_size, ErrorKind::kConfig, "the tokenizer has ",
              tok->vocab_size(), " ids but the model's vocabulary is ", model->config().vocab_size);
  n_params = 0;
  for (const auto& [name, p] : model->hf_named_parameters()) n_params += p.numel();
  log_info("model: {} layers, hidden {}, {:.1f}M parameters, {} on {}{}", model->config().num_hidden_layers,
           model->config().hidden_size, static_cast<double>(n_params) / 1e6,
           model->dtype() == c10::kBFloat16 ? "bfloat16" : "float32", device.str(),
           precision == Precision::kBf16 ? " (fp32 master weights)"
                                         : precision == Precision::kBf16Autocast ? " (bf16 autocast)" : "");
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
      grouping::apply_grouping(eval_set.examples, g, &*tok);
    }
  }
  log_info("eval data {}: {} examples, {} trained tokens", cfg.data.eval_path, eval_set.stats.examples,
           eval_set.stats.trained_tokens);
}

void Trainer::Impl::build_updater() {
  UpdaterOptions uo;
  uo.adamw = {cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps, cfg.optim.weight_decay};
  uo.bucket_mb = cfg.dist.bucket_mb;
  updater = make_updater(updater_kind(cfg, precision), comm, model->hf_named_parameters(), uo);
}

// ---- The step pipeline ------------------------------------------------------------------------
//   assemble the micro-batches -> decide the loss weights -> forward/backward each micro-batch ->
//   one reduction over ranks -> the update -> metrics

StepMetrics Trainer::Impl::train_step() {
  Timer timer;
  const double lambda = lambdas.at(step, total_steps);
  const double lr = optim::lr_at(schedule, step);
  std::vector<MicroBatch> micro = assemble_step();
  const StepWeights weights = decide_weights(micro, lambda);
  std::optional<loss::LossWeights> applied;
  StepTotals totals = forward_backward(micro, weights, lambda, &applied);
  updater->after_backward();  // on every rank, also after an aborted step: collectives stay matched
  totals.stop = stop_requested();
  if (world > 1) totals.all_reduce(*comm);  // the skip decision, the stop request, step-wide metrics
  stop_all = totals.stop;
  const double grad_norm = updater->step(lr, cfg.optim.grad_clip, totals.finite);
  updater->zero_grad();
  ++step;
  StepMetrics m = step_metrics(micro, weights, totals, applied, lambda, lr);
  m.grad_norm = grad_norm;
  m.skipped = !std::isfinite(grad_norm);
  nan_skips = m.skipped ? nan_skips + 1 : 0;
  tokens_seen += m.tokens;
  if (device.is_cuda()) torch::cuda::synchronize();
  m.step_s = timer.seconds();
  m.tokens_per_s = static_cast<double>(m.tokens) / std::max(1e-9, m.step_s);
  if (device.is_cuda()) m.mfu = 6.0 * static_cast<double>(n_params) * m.tokens_per_s / kH100PeakBf16Flops;
  return m;
}

// This step's examples, in micro-batches on the device, with the group sizes a dynamic function will
// choose (or its groups, when it takes the current losses from a separate forward).
std::vector<MicroBatch> Trainer::Impl::assemble_step() {
  const std::vector<std::string> scores = dynamic ? dynamic->batch_scores() : std::vector<std::string>{};
  std::vector<MicroBatch> micro;
  for (const data::Batch& b : loader->next_step(per_rank_batch)) micro.push_back(to_device(b, device, scores));
  if (dynamic)
    for (auto& b : micro) choose_groups_before_forward(b);
  return micro;
}

void Trainer::Impl::choose_groups_before_forward(MicroBatch& b) {
  if (dynamic->separate_forward()) {
    at::Tensor current = token_cross_entropy(forward_hidden(b), head_weight(), b.labels);  // [T]
    b.groups = dynamic->select(b.view, current);
    b.important = b.groups.sum().item<int64_t>();
    return;
  }
  b.groups = at::Tensor();  // chosen by the training forward (loss_options' groups_hook)
  b.important = dynamic->important_count(b.view);
}

Trainer::Impl::StepWeights Trainer::Impl::decide_weights(std::vector<MicroBatch>& micro, double lambda) {
  StepWeights w;
  w.plan = plan_weights(scope, objective, micro.size(), world);
  if (scope == loss::StatsScope::kMicrobatch) w.micro_scale = 1.0 / static_cast<double>(micro.size() * world);
  if (w.plan == WeightsPlan::kFromCounts) {
    loss::GroupStats counts;
    for (const auto& b : micro) {
      counts.count[1] += b.important;
      counts.count[0] += b.trained - b.important;
    }
    if (world > 1) counts = all_reduce_stats(*comm, counts);
    w.fixed = loss::compute_loss_weights(counts, lambda, objective);
  } else if (w.plan == WeightsPlan::kPrePass) {
    loss::GroupStats stats = stats_pre_pass(micro, lambda, &w.finite);
    // Every rank takes part even after a non-finite forward, so the collectives stay matched.
    if (world > 1) stats = all_reduce_stats(*comm, stats, &w.finite);
    if (w.finite) w.fixed = loss::compute_loss_weights(stats, lambda, objective);
  }
  return w;
}

// sftgo over several micro-batches: a no-grad forward of each gives the step's group sums (dynamic
// groups are chosen here once and kept for the training forward).
loss::GroupStats Trainer::Impl::stats_pre_pass(std::vector<MicroBatch>& micro, double lambda, bool* finite) {
  torch::NoGradGuard no_grad;
  loss::GroupStats stats;
  for (auto& b : micro) {
    loss::LossInfo info;
    try {
      loss::fused_group_loss(forward_hidden(b), head_weight(), b.labels, b.groups, loss_options(lambda, b), &info);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kNumeric) throw;
      *finite = false;
      break;
    }
    stats += info.local_stats;
  }
  return stats;
}

StepTotals Trainer::Impl::forward_backward(std::vector<MicroBatch>& micro, const StepWeights& w, double lambda,
                                           std::optional<loss::LossWeights>* applied) {
  StepTotals t;
  t.finite = w.finite;
  for (const auto& b : micro) t.tokens += b.tokens;
  loss::GroupStats global;  // kGlobalHook: the step's stats over ranks
  for (size_t i = 0; t.finite && i < micro.size(); ++i) {
    MicroBatch& b = micro[i];
    loss::FusedLossOptions opts = loss_options(lambda, b);
    // Weights known before the forward: the loss may take one pass (3 LM-head GEMMs instead of 4).
    if (w.fixed) opts.known_weights = *w.fixed;
    if (w.plan == WeightsPlan::kGlobalHook) {
      // Every rank reaches the hook (a local NaN must not skip the collective): the finiteness check
      // runs on the global sums instead, identically on every rank.
      opts.check_numerics = false;
      opts.weights_hook = [this, lambda, &global](const loss::GroupStats& local) {
        global = all_reduce_stats(*comm, local);
        if (!std::isfinite(global.total_loss())) return loss::LossWeights{NAN, {NAN, NAN}, -1};
        return loss::compute_loss_weights(global, lambda, objective);
      };
    }
    loss::LossInfo info;
    try {
      at::Tensor l = loss::fused_group_loss(forward_hidden(b), head_weight(), b.labels, b.groups, opts, &info);
      if (w.micro_scale != 1.0) l = l * w.micro_scale;
      if (i + 1 == micro.size()) updater->before_last_backward();  // reduce while the last backward runs
      l.backward();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kNumeric) throw;
      log_warn("step {}: {}", step + 1, e.message());
      t.finite = false;
      break;
    }
    t.seen += info.local_stats;
    t.micro_loss_sum += info.metrics.loss;
    *applied = info.weights;
  }
  return t;
}

StepMetrics Trainer::Impl::step_metrics(const std::vector<MicroBatch>& micro, const StepWeights& w,
                                        const StepTotals& t, const std::optional<loss::LossWeights>& applied,
                                        double lambda, double lr) {
  const bool multi = micro.size() > 1;
  // Metrics of the whole step from the summed statistics.
  const loss::LossWeights weights =
      w.fixed ? *w.fixed : (applied && !multi ? *applied : loss::compute_loss_weights(t.seen, lambda, objective));
  const loss::LossMetrics lm = loss::compute_loss_metrics(t.seen, weights, lambda);
  StepMetrics m;
  m.step = step;
  m.epoch = static_cast<double>(loader->state().epoch) +
            static_cast<double>(loader->state().index) / static_cast<double>(std::max<int64_t>(1, loader->examples_per_epoch()));
  m.loss = !t.finite ? NAN
           : scope == loss::StatsScope::kMicrobatch && (multi || world > 1)
               ? t.micro_loss_sum / static_cast<double>(micro.size() * world)
               : lm.loss;
  m.loss_ce = lm.loss_ce;
  m.loss_imp = lm.loss_imp;
  m.loss_unimp = lm.loss_unimp;
  m.worst_group = lm.worst;
  m.count_imp = t.seen.count[1];
  m.count_unimp = t.seen.count[0];
  m.tokens = t.tokens;
  m.trained_tokens = t.seen.total_count();
  m.lambda = lambda;
  m.lr = lr;
  m.comm_s = updater->comm_seconds();
  return m;
}

// The loss options of one micro-batch: a dynamic function picks its groups from this forward's
// per-token losses unless they were chosen already (separate forward, or the stats pre-pass).
loss::FusedLossOptions Trainer::Impl::loss_options(double lambda, MicroBatch& b) {
  loss::FusedLossOptions o;
  o.objective = objective;
  o.lambda = lambda;
  o.chunk_tokens = cfg.loss.chunk_tokens;
  o.check_numerics = cfg.loss.check_finite;
  o.accumulate_into_grad = static_cast<bool>(model->lm_head);  // untied head: its only use in the graph
  if (dynamic && !b.groups.defined()) {
    o.groups_hook = [this, &b](const at::Tensor& token_loss) {
      b.groups = dynamic->select(b.view, token_loss);
      const int64_t chosen = b.groups.sum().item<int64_t>();
      SFTGO_CHECK(chosen == b.important, ErrorKind::kInternal, "grouping function '", dynamic->name(), "' selected ",
                  chosen, " tokens, but promised ", b.important, " before the forward");
      return b.groups;
    };
  }
  return o;
}

// [V,H]. bf16_autocast: a bf16 copy (its backward hands the fp32 parameter an fp32 gradient).
at::Tensor Trainer::Impl::head_weight() const {
  const at::Tensor& w = model->lm_head ? model->lm_head->weight : model->embed_tokens->weight;
  return precision == Precision::kBf16Autocast ? w.to(at::kBFloat16) : w;
}

at::Tensor Trainer::Impl::forward_hidden(const MicroBatch& b) {
  const bool autocast = precision == Precision::kBf16Autocast;
  at::Tensor hidden;  // [B,S,H]
  {
    // One region per forward: leaving it drops the cached bf16 weight casts (the weights change at the
    // next optimizer step). Checkpointed blocks re-enter the same state for their recomputation.
    std::optional<model::AutocastGuard> region;
    if (autocast) region.emplace(device.type(), at::kBFloat16);
    hidden = model->forward(b.ids, b.positions, b.mask);
  }
  const int64_t S = hidden.size(1), H = hidden.size(2);
  // Only trained positions reach the LM head: prompt tokens cost no [T x V] work at all.
  hidden = hidden.slice(1, 0, S - 1).reshape({-1, H}).index_select(0, b.view.select);
  // The fused loss keeps its own precision (fp32 softmax and grad_h accumulation over bf16 GEMMs), so
  // under autocast it gets bf16 inputs and runs outside the region, as torch.amp.custom_fwd(cast_inputs=
  // torch.bfloat16) would run it; its bf16 logits blocks equal what autocast makes of HF's lm_head.
  return autocast ? hidden.to(at::kBFloat16) : hidden;
}

// ---- Evaluation, save, resume -----------------------------------------------------------------

// Mean losses over the whole eval set under the current weights (one set of group statistics). Rank r
// evaluates examples r, r + W, ...; the statistics are summed over ranks.
EvalMetrics Trainer::Impl::evaluate() {
  Timer timer;
  torch::NoGradGuard no_grad;
  const double lambda = lambdas.at(std::max<int64_t>(0, step - 1), total_steps);
  data::LoaderOptions lo = data::loader_options(data_options(cfg), pad_id, rank, world);
  lo.shuffle = false;
  lo.tail = data::TailPolicy::kUneven;
  data::DataLoader eval_loader(eval_set, lo);
  const std::vector<std::string> scores = dynamic ? dynamic->batch_scores() : std::vector<std::string>{};
  loss::GroupStats stats;
  for (const data::Batch& batch : eval_loader.next_step(eval_loader.examples_per_epoch())) {
    MicroBatch b = to_device(batch, device, scores);
    if (dynamic) b.groups = at::Tensor();
    if (dynamic) b.important = dynamic->important_count(b.view);
    loss::LossInfo info;
    loss::fused_group_loss(forward_hidden(b), head_weight(), b.labels, b.groups, loss_options(lambda, b), &info);
    stats += info.local_stats;
  }
  if (world > 1) stats = all_reduce_stats(*comm, stats);
  const loss::LossMetrics lm =
      loss::compute_loss_metrics(stats, loss::compute_loss_weights(stats, lambda, objective), lambda);
  EvalMetrics e;
  e.step = step;
  e.loss = lm.loss;
  e.loss_ce = lm.loss_ce;
  e.loss_imp = lm.loss_imp;
  e.loss_unimp = lm.loss_unimp;
  e.tokens = stats.total_count();
  e.seconds = timer.seconds();
  log_info("eval at step {}: loss {:.4f} | ce {:.4f} | imp {:.3f} | unimp {:.3f} | {} tokens in {:.1f}s", e.step,
           e.loss, e.loss_ce, e.loss_imp, e.loss_unimp, e.tokens, e.seconds);
  return e;
}

std::string Trainer::Impl::save(const std::string& why) {
  Timer t;
  const fs::path root = checkpoint::checkpoints_root(cfg.run.output_dir);
  const std::string name = checkpoint::checkpoint_dir_name(step);
  checkpoint::SaveRequest r;
  // Files that every rank writes (ZeRO-1 shards) are staged beside the checkpoint, on the same filesystem.
  updater->add_to_save(r, (root / (".zero_staging_" + name)).string());
  if (rank != 0) {
    comm->barrier();  // rank 0 is writing
    return (root / name).string();
  }
  r.model = model.get();
  r.state.world_size = world;
  r.state.step = step;
  r.state.total_steps = total_steps;
  r.state.sampler_epoch = loader->state().epoch;
  r.state.sampler_index = loader->state().index;
  r.state.nan_skips = nan_skips;
  r.state.tokens_seen = tokens_seen;
  r.state.lambda = lambdas.at(std::max<int64_t>(0, step - 1), total_steps);
  r.state.rng_state_hex = checkpoint::cpu_rng_state_hex();
  r.state.config_yaml = config_to_yaml(cfg);
  r.resolved_config_yaml = r.state.config_yaml;
  r.tokenizer_files = tokenizer_files(cfg.tokenizer.path);
  std::string dir = checkpoint::save_checkpoint(cfg.run.output_dir, r, cfg.train.keep_last);
  if (!r.move_files.empty()) {
    std::error_code ec;
    fs::remove_all(fs::path(r.move_files.front()).parent_path(), ec);
  }
  comm->barrier();
  log_info("saved checkpoint {} ({}, {:.1f}s)", dir, why, t.seconds());
  return dir;
}

void Trainer::Impl::resume_from(const std::string& dir) {
  auto st = checkpoint::load_trainer_state(dir);
  if (st.config_yaml != config_to_yaml(cfg))
    log_warn("resuming {} with a config that differs from the one it was saved with", dir);
  model::load_hf_weights(*model, dir);
  updater->resume(dir);
  data::SamplerState ss;
  ss.epoch = st.sampler_epoch;
  ss.index = st.sampler_index;
  if (st.world_size != world) {
    // Same global position in the epoch: every rank had consumed `index` of its share.
    const int64_t consumed = st.sampler_index * st.world_size;
    SFTGO_CHECK_HINT(consumed % world == 0, ErrorKind::kConfig, "resume with a world size that divides the examples consumed",
                     dir, " was saved by ", st.world_size, " ranks at ", consumed, " examples into epoch ", st.sampler_epoch,
                     ", which ", world, " ranks cannot split evenly");
    ss.index = consumed / world;
    log_warn("resuming {} saved by {} ranks with {}: same examples per step, but epoch tails are padded per rank", dir,
             st.world_size, world);
  }
  loader->set_state(ss);
  step = st.step;
  nan_skips = st.nan_skips;
  tokens_seen = st.tokens_seen;
  elapsed_before = st.elapsed_s;
  if (!st.rng_state_hex.empty()) checkpoint::set_cpu_rng_state_hex(st.rng_state_hex);
  log_info("resumed from {} at step {}/{}", dir, step, total_steps);
}

// ---- Trainer ----------------------------------------------------------------------------------

Trainer::Trainer(LoadedConfig config, TrainerHooks hooks)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(hooks))) {
  impl_->setup();
}

Trainer::~Trainer() = default;

std::vector<std::pair<std::string, at::Tensor>> Trainer::named_parameters() const {
  return impl_->model->hf_named_parameters();
}

TrainResult Trainer::run(const std::string& resume) {
  Impl& s = *impl_;
  const Config& cfg = s.cfg;
  TrainResult result;
  fs::create_directories(cfg.run.output_dir);
  if (!resume.empty()) {
    auto dir = checkpoint::resolve_resume_dir(resume, cfg.run.output_dir);
    if (dir) s.resume_from(*dir);
    else log_info("--resume auto: no checkpoint in {}, starting fresh", cfg.run.output_dir);
  }
  // Only rank 0 writes run files; metrics are already reduced over ranks.
  std::optional<MetricsLog> metrics_log;
  if (s.rank == 0) {
    write_file_atomic((fs::path(cfg.run.output_dir) / "resolved_config.yaml").string(), config_to_yaml(cfg));
    nlohmann::json versions = {{"sftgo", version_string()}, {"git", git_hash()}, {"libtorch", TORCH_VERSION},
                               {"cuda_kernels", built_with_cuda()}, {"device", s.device.str()}, {"world_size", s.world}};
    write_file_atomic((fs::path(cfg.run.output_dir) / "versions.json").string(), versions.dump(1) + "\n");
    metrics_log.emplace((fs::path(cfg.run.output_dir) / "metrics.jsonl").string(), resume.empty() ? -1 : s.step);
  }
  auto write_metrics = [&](const auto& m) {
    if (metrics_log) metrics_log->write(m);
  };

  const bool tty = ::isatty(2);
  Timer wall;
  int64_t last_saved = -1;
  int64_t last_eval = -1;
  bool first = true;
  while (s.step < s.total_steps) {
    StepMetrics m = s.train_step();
    m.elapsed_s = s.elapsed_before + wall.seconds();
    write_metrics(m);
    if (first) result.first_loss = m.loss;
    first = false;
    result.last_loss = m.loss;
    result.steps = s.step;
    if (m.skipped) ++result.skipped_steps;
    if (tty && is_rank0()) {
      std::fprintf(stderr, "\r\033[K%s %s", progress_bar(s.step, s.total_steps).c_str(),
                   progress_line(m, s.total_steps).c_str());
      if (s.step == s.total_steps || m.skipped) std::fprintf(stderr, "\n");
    } else if (s.step % cfg.train.log_every == 0 || s.step == s.total_steps || m.skipped) {
      log_info("{}", progress_line(m, s.total_steps));
    }
    if (s.nan_skips > cfg.train.max_nan_skips) {
      std::string dir = s.save("before stopping on non-finite values");
      s.comm->shutdown();  // every rank reaches this step together
      SFTGO_FAIL_HINT(ErrorKind::kNumeric, "lower optim.lr, check the data, or resume from the checkpoint",
                      "training stopped at step ", s.step, ": ", s.nan_skips, " steps in a row had a non-finite loss or gradient (train.max_nan_skips = ",
                      cfg.train.max_nan_skips, "); the last good weights are saved in ", dir);
    }
    if (!s.eval_set.examples.empty() && cfg.train.eval_every > 0 && s.step % cfg.train.eval_every == 0) {
      write_metrics(s.evaluate());
      last_eval = s.step;
    }
    if (s.hooks.on_step && !s.hooks.on_step(m)) return result;  // simulated kill: no final save
    if (cfg.train.save_every > 0 && s.step % cfg.train.save_every == 0 && s.step < s.total_steps) {
      result.last_checkpoint = s.save("periodic");
      last_saved = s.step;
    }
    // Several ranks agree on stopping in the step's all-reduce (any rank's SIGINT/SIGTERM stops all).
    if (s.world > 1 ? s.stop_all : stop_requested()) {
      if (tty) std::fprintf(stderr, "\n");
      result.last_checkpoint = s.save("stop requested");
      result.interrupted = true;
      log_info("stopped at step {}/{}; resume with --resume auto", s.step, s.total_steps);
      s.comm->shutdown();
      return result;
    }
  }
  if (!s.eval_set.examples.empty() && last_eval != s.step) write_metrics(s.evaluate());
  if (last_saved != s.step) result.last_checkpoint = s.save("final");
  s.comm->shutdown();
  log_info("done: {} steps in {}, final loss {:.4f}", s.step, format_duration(wall.seconds()), result.last_loss);
  return result;
}

}  // namespace sftgo::train
