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
#include "sftgo/data/collate.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/sampler.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/zero.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/rho1_torch.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/autocast.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/score.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"

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

// The loss statistics as doubles for one all-reduce, and back.
std::vector<double> pack(const loss::GroupStats& s) {
  return {s.loss_sum[0], s.loss_sum[1], static_cast<double>(s.count[0]), static_cast<double>(s.count[1])};
}
loss::GroupStats unpack(const std::vector<double>& v, size_t at = 0) {
  loss::GroupStats s;
  s.loss_sum[0] = v[at];
  s.loss_sum[1] = v[at + 1];
  s.count[0] = static_cast<int64_t>(std::llround(v[at + 2]));
  s.count[1] = static_cast<int64_t>(std::llround(v[at + 3]));
  return s;
}

// The tokenizer directory's files, copied into every checkpoint so it loads as a HF model dir.
std::vector<std::string> tokenizer_files(const std::string& path) {
  fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  return {(dir / "tokenizer.json").string(), (dir / "tokenizer_config.json").string()};
}

// One micro-batch moved to the device and reduced to what the loss needs.
struct DeviceBatch {
  at::Tensor ids, positions, mask;  // [B,S], [B,S], bool [B,1,S,S] or undefined
  at::Tensor select;                // [T] flat indices of trained positions in [B*(S-1)]
  at::Tensor labels, groups;        // [T] int64, [T] uint8: shifted to the predicting position
  at::Tensor ref_loss;              // [B,S-1] reference-model loss of each predicted token (Rho-1)
  at::Tensor trained_dense;         // [B,S-1] bool, labels != ignore (Rho-1 selection)
  int64_t rows = 0, seq = 0;        // B, S
  int64_t tokens = 0;               // real (non-padding) tokens
  int64_t trained = 0;
  int64_t important = 0;
};

// Per-token cross-entropy [T] (fp32) of hidden [T,H] under the LM head weight [V,H] for labels [T],
// in row chunks so no more than [1024 x V] logits exist at once. No autograd.
at::Tensor token_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  const at::Tensor w = weight.to(at::kFloat);
  for (int64_t i = 0; i < hidden.size(0); i += 1024) {
    const int64_t n = std::min<int64_t>(1024, hidden.size(0) - i);
    at::Tensor logits = at::linear(hidden.narrow(0, i, n).to(at::kFloat), w);  // [n,V]
    at::Tensor picked = logits.gather(1, labels.narrow(0, i, n).unsqueeze(1)).squeeze(1);
    parts.push_back(at::logsumexp(logits, 1) - picked);
  }
  if (parts.empty()) return at::zeros({0}, hidden.options().dtype(at::kFloat));
  return at::cat(parts);
}

}  // namespace

struct Trainer::Impl {
  LoadedConfig loaded;
  const Config& cfg;
  TrainerHooks hooks;

  c10::Device device{c10::kCPU};
  // Data parallelism: a process group when launched by mpirun/torchrun, else world 1 and no group.
  dist::LaunchEnv launch;
  std::shared_ptr<dist::Comm> comm;
  std::unique_ptr<dist::GradReducer> reducer;  // plain data parallel (world > 1, no ZeRO-1)
  std::unique_ptr<dist::ZeroAdamW> zero;       // dist.zero1: replaces `optimizer` and `masters`
  int rank = 0, world = 1;
  bool stop_all = false;  // some rank was asked to stop (SIGINT/SIGTERM): every rank saves and stops
  std::optional<Tokenizer> tok;
  data::PreparedDataset dataset;
  data::PreparedDataset eval_set;  // data.eval_path; empty when none
  model::LlamaModel model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<data::DistributedSampler> sampler;
  loss::Objective objective = loss::Objective::kSftGo;
  loss::StatsScope scope = loss::StatsScope::kStep;
  optim::LrSchedule schedule;
  int64_t per_rank_batch = 1;
  int64_t steps_per_epoch = 1;
  int64_t total_steps = 1;
  int64_t n_params = 0;
  int32_t pad_id = 0;
  bool rho1 = false;  // groups chosen every step from the excess loss over a reference model
  // train.precision: bf16 -> bf16 working weights, fp32 master weights and optimizer state.
  bool mixed = false;
  // train.precision: bf16_autocast -> fp32 weights and AdamW state; the forward runs in an autocast
  // region (bf16 matmuls), the fused loss gets bf16 inputs, backward runs outside the region.
  bool autocast = false;
  std::vector<std::pair<std::string, at::Tensor>> working;  // the model's parameters
  std::vector<std::pair<std::string, at::Tensor>> masters;  // fp32 copies the optimizer updates

  // Progress, saved in checkpoints.
  int64_t step = 0;
  int64_t nan_skips = 0;
  int64_t tokens_seen = 0;
  double elapsed_before = 0;

  Impl(LoadedConfig l, TrainerHooks h) : loaded(std::move(l)), cfg(loaded.config), hooks(std::move(h)) {}

  void setup();
  void prepare_groups();
  void build_model();
  void score_reference_model();
  void select_rho1_groups(DeviceBatch& b);
  at::Tensor rho1_mask(const DeviceBatch& b, const at::Tensor& current) const;  // current [T] -> groups [T]
  loss::GroupsHook rho1_groups_hook(DeviceBatch& b);
  void prepare_eval();
  EvalMetrics evaluate();
  void resume_from(const std::string& dir);
  double lambda_at(int64_t s) const;
  DeviceBatch to_device(const data::Batch& b) const;
  at::Tensor forward_hidden(const DeviceBatch& b);  // [T,H] hidden states of trained positions
  at::Tensor head_weight() const;
  loss::FusedLossOptions loss_options(double lambda) const;
  StepMetrics train_step();
  std::string save(const std::string& why);
};

void Trainer::Impl::setup() {
  Timer t;
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
  {
    dist::CommOptions co;
    co.backend = cfg.dist.backend;
    co.timeout_s = cfg.dist.timeout_s;
    comm = dist::Comm::create(launch, co, device);
    comm->start_watchdog();
    if (world > 1)
      log_info("data parallel: {} ranks ({}), {} backend, rendezvous {}:{}, ZeRO-1 {}", world, launch.launcher,
               comm->backend(), launch.master_addr, launch.master_port, cfg.dist.zero1 ? "on" : "off");
  }
  mixed = cfg.train.precision == "bf16";
  autocast = cfg.train.precision == "bf16_autocast";
  SFTGO_CHECK_HINT(!autocast || cfg.model.dtype == "float32", ErrorKind::kConfig,
                   "set model.dtype: float32, or use train.precision: bf16 for bf16 weights",
                   "train.precision bf16_autocast keeps fp32 weights (autocast casts them per op) but model.dtype is ",
                   cfg.model.dtype);
  SFTGO_CHECK(cfg.train.eval_every == 0 || !cfg.data.eval_path.empty(), ErrorKind::kConfig,
              "train.eval_every is set but data.eval_path is empty: name the held-out data file");
  objective = loss::parse_objective(cfg.loss.objective);
  scope = loss::parse_stats_scope(cfg.loss.scope);

  tok.emplace(Tokenizer::load(cfg.tokenizer.path));
  pad_id = tok->pad_id().value_or(tok->eos_id().value_or(0));

  dataset = data::prepare_dataset(data_options(cfg), *tok);
  const auto& st = dataset.stats;
  SFTGO_CHECK(!dataset.examples.empty(), ErrorKind::kData, cfg.data.path, ": no trainable examples (", st.records,
              " records, ", st.dropped_too_long, " too long, ", st.dropped_no_trained, " without response tokens)");
  log_info("data {}: {} examples, {} tokens ({} trained), {} truncated, {} dropped{}", cfg.data.path, st.examples,
           st.tokens, st.trained_tokens, st.truncated, st.dropped_too_long + st.dropped_no_trained,
           dataset.from_cache ? " (from cache)" : "");

  prepare_groups();
  build_model();
  if (rho1) score_reference_model();
  if (!cfg.data.eval_path.empty()) prepare_eval();

  per_rank_batch = cfg.train.global_batch_size / world;
  sampler = std::make_unique<data::DistributedSampler>(static_cast<int64_t>(dataset.examples.size()),
                                                       static_cast<uint64_t>(cfg.run.seed), rank, world);
  steps_per_epoch = (sampler->per_rank() + per_rank_batch - 1) / per_rank_batch;
  total_steps = cfg.train.max_steps > 0
                    ? cfg.train.max_steps
                    : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cfg.train.epochs * static_cast<double>(steps_per_epoch) - 1e-9)));

  optim::AdamWOptions ao{cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps, cfg.optim.weight_decay};
  working = model->hf_named_parameters();
  if (cfg.dist.zero1) {
    // ZeRO-1 keeps its own fp32 master shard, so bf16 runs need no full-size masters.
    zero = std::make_unique<dist::ZeroAdamW>(comm, working, ao);
  } else if (mixed) {
    for (const auto& [name, p] : working)
      masters.emplace_back(name, p.detach().to(at::kFloat).clone().set_requires_grad(true));
    optimizer = optim::make_adamw(masters, ao);
  } else {
    optimizer = optim::make_adamw(working, ao);
  }
  if (world > 1 && !zero) {
    std::vector<at::Tensor> trainable;
    for (const auto& [name, p] : working)
      if (p.requires_grad()) trainable.push_back(p);
    reducer = std::make_unique<dist::GradReducer>(comm, trainable, cfg.dist.bucket_mb);
  }
  schedule.peak_lr = cfg.optim.lr;
  schedule.total_steps = total_steps;
  schedule.warmup_steps = optim::resolve_warmup_steps(cfg.optim.warmup_steps, cfg.optim.warmup_ratio, total_steps);
  schedule.decay = optim::parse_lr_decay(cfg.optim.schedule);
  schedule.min_lr_ratio = cfg.optim.min_lr_ratio;
  log_info("setup in {:.1f}s: {} optimizer steps ({} per epoch, {} micro-batches of {} per step), device {}",
           t.seconds(), total_steps, steps_per_epoch, per_rank_batch / cfg.train.micro_batch_size,
           cfg.train.micro_batch_size, device.str());
}

void Trainer::Impl::prepare_groups() {
  if (cfg.grouping.function == "none") {
    SFTGO_CHECK(objective == loss::Objective::kCe, ErrorKind::kConfig, "loss.objective '", cfg.loss.objective,
                "' needs grouping.function other than none");
    return;
  }
  const grouping::GroupingOptions g = grouping_options(cfg);
  auto fn = grouping::make_grouping_function(g, &*tok);  // validates the name early
  if (g.function == "rho1") {
    SFTGO_CHECK_HINT(!cfg.grouping.rho1_reference_model.empty(), ErrorKind::kConfig,
                     "set grouping.rho1_reference_model to a Hugging Face checkpoint directory",
                     "grouping.function rho1 needs a reference model");
    grouping::parse_selection(cfg.grouping.selection);
    rho1 = true;
    return;
  }
  SFTGO_CHECK_HINT(fn->is_static(), ErrorKind::kConfig, "use rho1 or a static function (tfidf, frequency, random)",
                   "grouping.function '", g.function, "' selects tokens from the training model's loss; the trainer "
                   "does not support dynamic grouping yet");
  SFTGO_CHECK(cfg.grouping.selection == "sequence", ErrorKind::kConfig,
              "grouping.selection 'batch' is only supported with rho1 so far; use 'sequence'");
  auto out = grouping::apply_grouping(dataset.examples, g, &*tok);
  std::vector<std::vector<uint8_t>> masks;
  masks.reserve(dataset.examples.size());
  for (const auto& ex : dataset.examples) masks.push_back(ex.groups);
  auto share = grouping::group_share(dataset.examples, masks);
  log_info("grouping {}: {:.1f}% of {} trained tokens important (k = {}%), {:.2f}s{}", g.function,
           100.0 * share.overall, share.trained_tokens, g.top_k_percent, out.seconds, out.from_cache ? " (cache)" : "");
}

void Trainer::Impl::build_model() {
  model::ModelOptions mo;
  // precision bf16 always computes in bf16; the fp32 copies live with the optimizer.
  mo.dtype = (cfg.model.dtype == "bfloat16" || cfg.train.precision == "bf16") ? c10::kBFloat16 : c10::kFloat;
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
           cfg.train.precision == "bf16" ? " (fp32 master weights)" : autocast ? " (bf16 autocast)" : "");
}

namespace {
// Identity of a checkpoint's weights for the reference-loss cache: its config.json and the name, size
// and modification time of every safetensors file (re-training into the same directory changes it).
std::string checkpoint_identity(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string id = fs::weakly_canonical(dir).string();
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(fs::path(dir))) {
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json"))
      files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  for (const auto& name : files) {
    const fs::path p = fs::path(dir) / name;
    const auto mtime = fs::last_write_time(p).time_since_epoch().count();
    id += sftgo::format(";{}:{}:{}", name, fs::file_size(p), mtime);
  }
  return id;
}
}  // namespace

// Rho-1: the frozen reference model scores every example once; its per-token loss travels with the
// example as scores["ref_loss"] (entry t is the loss of predicting token t). The losses are cached on disk (data.cache_dir) keyed on the
// examples, the reference checkpoint and the dtype, so further seeds and restarts skip the scoring.
void Trainer::Impl::score_reference_model() {
  Timer t;
  const std::string& ref_dir = cfg.grouping.rho1_reference_model;
  const model::LlamaConfig ref_cfg = model::LlamaConfig::from_file(ref_dir);
  SFTGO_CHECK(ref_cfg.vocab_size == model->config().vocab_size, ErrorKind::kConfig,
              "the Rho-1 reference model ", ref_dir, " has a vocabulary of ", ref_cfg.vocab_size,
              " but the trained model's is ", model->config().vocab_size);
  std::string cache_path;
  uint64_t key = 0;
  if (!cfg.data.cache_dir.empty()) {
    const std::string examples = sftgo::format("{:x}", grouping::examples_fingerprint(dataset.examples));
    const std::string params = sftgo::format("dtype={};{}", c10::toString(model->dtype()), checkpoint_identity(ref_dir));
    key = grouping::grouping_cache_key(examples, "rho1-ref", params, 0.0);
    cache_path = grouping::grouping_cache_path(cfg.data.cache_dir, "rho1-ref", key);
    if (auto cached = grouping::load_grouping_cache(cache_path, key, dataset.examples)) {
      for (size_t i = 0; i < dataset.examples.size(); ++i)
        dataset.examples[i].scores[grouping::kRefLossKey] = std::move(cached->scores[i]);
      log_info("rho1: reference losses of {} loaded from {} ({:.2f}s)", ref_dir, cache_path, t.seconds());
      return;
    }
  }
  model::ModelOptions mo;
  mo.dtype = model->dtype();
  mo.device = device;
  mo.init_weights = false;
  model::LlamaModel ref = model::load_pretrained(ref_dir, mo);
  std::vector<std::vector<int64_t>> seqs;
  seqs.reserve(dataset.examples.size());
  for (const auto& ex : dataset.examples) seqs.emplace_back(ex.ids.begin(), ex.ids.end());
  const auto logprobs = model::score_logprobs(*ref, seqs);
  grouping::GroupingOutput out;
  for (size_t i = 0; i < dataset.examples.size(); ++i) {
    auto& ex = dataset.examples[i];
    std::vector<float> loss(ex.ids.size(), 0.0f);
    for (size_t k = 1; k < ex.ids.size(); ++k) loss[k] = static_cast<float>(-logprobs[i][k - 1]);
    if (!cache_path.empty()) {
      out.groups.emplace_back(ex.ids.size(), grouping::kGroupOther);
      out.scores.push_back(loss);
    }
    ex.scores[grouping::kRefLossKey] = std::move(loss);
  }
  if (!cache_path.empty() && is_rank0()) grouping::save_grouping_cache(cache_path, key, out);
  log_info("rho1: reference model {} scored {} examples in {:.1f}s{}", ref_dir, dataset.examples.size(), t.seconds(),
           cache_path.empty() ? "" : sftgo::format(" (cached in {})", cache_path));
}

// Rho-1 groups of one micro-batch: top-k% excess loss (current - reference) per sequence or per
// micro-batch. The current loss is the training forward's own: the fused loss hands its per-token CE
// to rho1_groups_hook, so no second forward runs. Only the group sizes are fixed here (they follow
// from the token counts, and step-scope weights need them before any forward).
// grouping.rho1_extra_forward: the current loss from a separate no-grad forward instead (the old way).
void Trainer::Impl::select_rho1_groups(DeviceBatch& b) {
  if (cfg.grouping.rho1_extra_forward) {
    at::Tensor current;
    {
      torch::NoGradGuard no_grad;
      current = token_cross_entropy(forward_hidden(b), head_weight(), b.labels);  // [T]
    }
    b.groups = rho1_mask(b, current);
    b.important = b.groups.sum().item<int64_t>();
    return;
  }
  b.groups = at::Tensor();  // chosen in the training forward
  const double k = cfg.grouping.top_k_percent;
  if (grouping::parse_selection(cfg.grouping.selection) == grouping::Selection::kBatch) {
    b.important = grouping::num_important(b.trained, k);
  } else {
    const at::Tensor per_row = b.trained_dense.sum(1).cpu();  // [B] trained tokens per sequence
    b.important = 0;
    for (int64_t r = 0; r < b.rows; ++r) b.important += grouping::num_important(per_row[r].item<int64_t>(), k);
  }
}

at::Tensor Trainer::Impl::rho1_mask(const DeviceBatch& b, const at::Tensor& current) const {
  at::Tensor dense = at::zeros({b.rows * (b.seq - 1)}, current.options()).index_put_({b.select}, current);
  at::Tensor mask = grouping::select_rho1(dense.view({b.rows, b.seq - 1}), b.ref_loss, b.trained_dense,
                                          cfg.grouping.top_k_percent, grouping::parse_selection(cfg.grouping.selection));
  return mask.reshape({-1}).to(device).index_select(0, b.select);  // [T] uint8
}

// Called by the fused loss with the forward's per-token CE [T]; the groups it returns stay in b.
loss::GroupsHook Trainer::Impl::rho1_groups_hook(DeviceBatch& b) {
  return [this, &b](const at::Tensor& token_loss) {
    b.groups = rho1_mask(b, token_loss);
    const int64_t chosen = b.groups.sum().item<int64_t>();
    SFTGO_CHECK(chosen == b.important, ErrorKind::kInternal, "rho1: selected ", chosen, " tokens, expected ",
                b.important);
    return b.groups;
  };
}

// The held-out set goes through the same template and (static) grouping as the training data; a
// corpus-statistics function such as TF-IDF is fitted on the eval set itself.
void Trainer::Impl::prepare_eval() {
  SFTGO_CHECK_HINT(!rho1, ErrorKind::kConfig, "leave data.eval_path empty with grouping.function rho1",
                   "eval-loss passes are not supported with Rho-1 grouping yet");
  data::DataOptions eo = data_options(cfg);
  eo.path = cfg.data.eval_path;
  eval_set = data::prepare_dataset(eo, *tok);
  SFTGO_CHECK(!eval_set.examples.empty(), ErrorKind::kData, cfg.data.eval_path, ": no trainable examples");
  if (cfg.grouping.function != "none") grouping::apply_grouping(eval_set.examples, grouping_options(cfg), &*tok);
  log_info("eval data {}: {} examples, {} trained tokens", cfg.data.eval_path, eval_set.stats.examples,
           eval_set.stats.trained_tokens);
}

// Mean losses over the whole eval set under the current weights (one set of group statistics).
EvalMetrics Trainer::Impl::evaluate() {
  Timer timer;
  torch::NoGradGuard no_grad;
  const double lambda = lambda_at(std::max<int64_t>(0, step - 1));
  loss::GroupStats stats;
  const size_t mb = static_cast<size_t>(cfg.train.micro_batch_size);
  // Rank r evaluates examples r, r + W, ...; the statistics are summed over ranks below.
  std::vector<const data::TokenizedExample*> mine;
  for (size_t j = static_cast<size_t>(rank); j < eval_set.examples.size(); j += static_cast<size_t>(world))
    mine.push_back(&eval_set.examples[j]);
  for (size_t i = 0; i < mine.size(); i += mb) {
    std::vector<const data::TokenizedExample*> exs(mine.begin() + static_cast<std::ptrdiff_t>(i),
                                                   mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), i + mb)));
    data::Batch b = cfg.data.packing ? data::collate_packed(exs, cfg.data.max_seq_len, pad_id)
                                     : data::collate_padded(exs, pad_id);
    DeviceBatch d = to_device(b);
    loss::LossInfo info;
    loss::fused_group_loss(forward_hidden(d), head_weight(), d.labels, d.groups, loss_options(lambda), &info);
    stats += info.local_stats;
  }
  if (world > 1) stats = unpack(comm->sum(pack(stats)));
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

double Trainer::Impl::lambda_at(int64_t s) const {
  if (cfg.loss.lambda_schedule == "linear_decay")
    return loss::lambda_linear_decay(cfg.loss.lambda_max, cfg.loss.lambda_min, s, total_steps);
  return loss::lambda_static(cfg.loss.lambda);
}

DeviceBatch Trainer::Impl::to_device(const data::Batch& b) const {
  DeviceBatch d;
  const int64_t S = b.seq_len();
  d.ids = b.input_ids.to(device);
  d.positions = b.position_ids.to(device);
  // Padded rows are right-padded, so plain causal attention never lets a real token see padding;
  // packed rows need per-document masks.
  if (b.packed) d.mask = model::document_causal_mask(b.document_ids.to(device));
  // Logits at position t predict the token at t+1: shift labels and groups left by one.
  at::Tensor labels = b.labels.slice(1, 1, S).reshape({-1});
  at::Tensor groups = b.groups.slice(1, 1, S).reshape({-1});
  d.select = (labels != data::kIgnoreLabel).nonzero().squeeze(1);
  d.labels = labels.index_select(0, d.select).to(device);
  at::Tensor g = groups.index_select(0, d.select);
  d.groups = g.to(device);
  d.trained = d.select.numel();
  d.important = g.sum().item<int64_t>();
  d.tokens = b.attention_mask.sum().item<int64_t>();
  d.rows = b.rows();
  d.seq = S;
  if (rho1) {
    auto it = b.scores.find(grouping::kRefLossKey);
    SFTGO_CHECK(it != b.scores.end(), ErrorKind::kInternal, "rho1: batch without reference losses");
    d.ref_loss = it->second.slice(1, 1, S).to(device);
    d.trained_dense = (b.labels.slice(1, 1, S) != data::kIgnoreLabel).to(device);
  }
  d.select = d.select.to(device);
  return d;
}

// [V,H]. bf16_autocast: a bf16 copy (its backward hands the fp32 parameter an fp32 gradient).
at::Tensor Trainer::Impl::head_weight() const {
  const at::Tensor& w = model->lm_head ? model->lm_head->weight : model->embed_tokens->weight;
  return autocast ? w.to(at::kBFloat16) : w;
}

at::Tensor Trainer::Impl::forward_hidden(const DeviceBatch& b) {
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
  hidden = hidden.slice(1, 0, S - 1).reshape({-1, H}).index_select(0, b.select);
  // The fused loss keeps its own precision (fp32 softmax and grad_h accumulation over bf16 GEMMs), so
  // under autocast it gets bf16 inputs and runs outside the region, as torch.amp.custom_fwd(cast_inputs=
  // torch.bfloat16) would run it; its bf16 logits blocks equal what autocast makes of HF's lm_head.
  return autocast ? hidden.to(at::kBFloat16) : hidden;
}

loss::FusedLossOptions Trainer::Impl::loss_options(double lambda) const {
  loss::FusedLossOptions o;
  o.objective = objective;
  o.lambda = lambda;
  o.chunk_tokens = cfg.loss.chunk_tokens;
  o.check_numerics = cfg.loss.check_finite;
  o.accumulate_into_grad = static_cast<bool>(model->lm_head);  // untied head: its only use in the graph
  return o;
}

StepMetrics Trainer::Impl::train_step() {
  Timer timer;
  StepMetrics m;
  const double lambda = lambda_at(step);
  const double lr = optim::lr_at(schedule, step);

  // This step's examples, in micro-batches.
  std::vector<int64_t> indices = sampler->next(per_rank_batch);
  std::vector<DeviceBatch> micro;
  for (size_t i = 0; i < indices.size(); i += static_cast<size_t>(cfg.train.micro_batch_size)) {
    std::vector<const data::TokenizedExample*> exs;
    for (size_t j = i; j < std::min(indices.size(), i + static_cast<size_t>(cfg.train.micro_batch_size)); ++j)
      exs.push_back(&dataset.examples[static_cast<size_t>(indices[j])]);
    data::Batch b = cfg.data.packing ? data::collate_packed(exs, cfg.data.max_seq_len, pad_id)
                                     : data::collate_padded(exs, pad_id);
    micro.push_back(to_device(b));
  }
  if (rho1)
    for (auto& b : micro) select_rho1_groups(b);

  // Weights of the step. With scope=step the group means cover every micro-batch, so the
  // per-token coefficients must be known before the first backward:
  //  * ce and rho1 need only token counts, known from the labels;
  //  * sftgo with one micro-batch takes them from its own forward;
  //  * sftgo with several runs a no-grad pre-pass for the step's group sums (one extra forward).
  loss::GroupStats count_stats;
  for (const auto& b : micro) {
    count_stats.count[1] += b.important;
    count_stats.count[0] += b.trained - b.important;
    m.tokens += b.tokens;
  }
  // Step scope covers every rank's tokens too: counts and sums are all-reduced before any backward,
  // so each rank's loss is already normalised globally and gradients are SUMMED across ranks.
  if (scope == loss::StatsScope::kStep && world > 1) count_stats = unpack(comm->sum(pack(count_stats)));
  std::optional<loss::LossWeights> fixed;
  loss::GroupStats step_stats;
  bool finite = true;
  const bool multi = micro.size() > 1;
  // sftgo with one micro-batch on several ranks: the weights come from a hook that all-reduces the
  // forward's own statistics (no extra forward pass).
  bool global_hook = false;
  if (scope == loss::StatsScope::kStep && multi) {
    if (objective == loss::Objective::kSftGo) {
      torch::NoGradGuard no_grad;
      for (auto& b : micro) {
        loss::LossInfo info;
        auto o = loss_options(lambda);
        if (rho1 && !b.groups.defined()) o.groups_hook = rho1_groups_hook(b);  // Rho-1: groups from this forward
        try {
          loss::fused_group_loss(forward_hidden(b), head_weight(), b.labels, b.groups, o, &info);
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kNumeric) throw;
          finite = false;
          break;
        }
        step_stats += info.local_stats;
      }
      if (world > 1) {
        // Every rank takes part even after a non-finite forward, so the collectives stay matched.
        std::vector<double> v = pack(step_stats);
        v.push_back(finite ? 0.0 : 1.0);
        v = comm->sum(v);
        step_stats = unpack(v);
        finite = v[4] == 0.0;
      }
      if (finite) fixed = loss::compute_loss_weights(step_stats, lambda, objective);
    } else {
      fixed = loss::compute_loss_weights(count_stats, lambda, objective);
    }
  } else if (scope == loss::StatsScope::kStep && world > 1) {
    if (objective == loss::Objective::kSftGo) global_hook = true;
    else fixed = loss::compute_loss_weights(count_stats, lambda, objective);
  }
  // microbatch scope: every micro-batch of every rank counts equally (mean over M x world).
  const double micro_scale = scope == loss::StatsScope::kMicrobatch ? 1.0 / static_cast<double>(micro.size() * world) : 1.0;

  loss::GroupStats seen;
  double micro_loss_sum = 0;
  std::optional<loss::LossWeights> applied;
  for (size_t i = 0; finite && i < micro.size(); ++i) {
    const auto& b = micro[i];
    auto opts = loss_options(lambda);
    if (rho1 && !b.groups.defined()) opts.groups_hook = rho1_groups_hook(micro[i]);  // Rho-1: groups from this forward
    // Weights known before the forward: the loss may take one pass (3 LM-head GEMMs instead of 4).
    if (fixed) opts.known_weights = *fixed;
    if (global_hook) {
      // Every rank reaches the hook (a local NaN must not skip the collective): the finiteness check
      // runs on the global sums instead, identically on every rank.
      opts.check_numerics = false;
      opts.weights_hook = [this, lambda, &step_stats](const loss::GroupStats& local) {
        step_stats = unpack(comm->sum(pack(local)));
        if (!std::isfinite(step_stats.total_loss())) return loss::LossWeights{NAN, {NAN, NAN}, -1};
        return loss::compute_loss_weights(step_stats, lambda, objective);
      };
    }
    loss::LossInfo info;
    try {
      at::Tensor l = loss::fused_group_loss(forward_hidden(b), head_weight(), b.labels, b.groups, opts, &info);
      if (micro_scale != 1.0) l = l * micro_scale;
      // The step's last backward reduces gradients while it runs; earlier ones only accumulate.
      if (reducer && i + 1 == micro.size()) reducer->arm();
      l.backward();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kNumeric) throw;
      log_warn("step {}: {}", step + 1, e.message());
      finite = false;
      break;
    }
    seen += info.local_stats;
    micro_loss_sum += info.metrics.loss;
    applied = info.weights;
  }
  // Called on every rank, also after an aborted step, so all ranks issue the same collectives.
  Timer comm_timer;
  if (reducer) {
    reducer->finish();
    m.comm_s = comm_timer.seconds();
  }
  if (world > 1) {
    // One all-reduce for the skip decision, the stop request and the step-wide metrics.
    std::vector<double> v = pack(seen);
    v.insert(v.end(), {finite ? 0.0 : 1.0, stop_requested() ? 1.0 : 0.0, static_cast<double>(m.tokens), micro_loss_sum});
    v = comm->sum(v);
    seen = unpack(v);
    finite = v[4] == 0.0;
    stop_all = v[5] > 0.0;
    m.tokens = static_cast<int64_t>(std::llround(v[6]));
    micro_loss_sum = v[7];
    m.trained_tokens = seen.total_count();
  }

  if (zero) {
    comm_timer.reset();
    m.grad_norm = finite ? zero->step(lr, cfg.optim.grad_clip) : NAN;
    if (world > 1) m.comm_s = comm_timer.seconds();
    if (!std::isfinite(m.grad_norm)) {
      finite = false;
      ++nan_skips;
      m.skipped = true;
    }
    zero->zero_grad();
  }
  if (mixed && finite && !zero) {
    // bf16 gradients -> fp32 master gradients; clipping and AdamW then work in fp32.
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < masters.size(); ++i) {
      const at::Tensor& g = working[i].second.grad();
      masters[i].second.mutable_grad() = g.defined() ? g.to(at::kFloat) : at::zeros_like(masters[i].second);
    }
  }
  if (!zero) {
    // Gradients are identical on every rank after the reduction, so are the norm and the update.
    std::vector<at::Tensor> all_params;
    for (const auto& g : optimizer->param_groups())
      for (const auto& p : g.params()) all_params.push_back(p);
    m.grad_norm = finite ? optim::clip_grad_norm(all_params, cfg.optim.grad_clip) : NAN;
    if (!std::isfinite(m.grad_norm)) finite = false;
    if (finite) {
      optim::set_lr(*optimizer, lr);
      optimizer->step();
      if (mixed) {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < masters.size(); ++i) working[i].second.copy_(masters[i].second);
      }
    } else {
      ++nan_skips;
      m.skipped = true;
    }
    // With a reducer the working gradients are views of its all-reduce buckets, zeroed in place below
    // and never set to None (with bf16 the optimizer holds the fp32 masters, whose gradients are freed).
    if (!reducer || mixed) optimizer->zero_grad(true);
  }
  if (reducer) reducer->zero_grad();
  else if (mixed && !zero) model->zero_grad(true);

  ++step;
  tokens_seen += m.tokens;
  // Metrics of the whole step from the summed statistics.
  const loss::LossWeights w = fixed ? *fixed : (applied && !multi ? *applied : loss::compute_loss_weights(seen, lambda, objective));
  const loss::LossMetrics lm = loss::compute_loss_metrics(seen, w, lambda);
  m.step = step;
  m.epoch = static_cast<double>(sampler->state().epoch) +
            static_cast<double>(sampler->state().index) / static_cast<double>(std::max<int64_t>(1, sampler->per_rank()));
  m.loss = finite ? (scope == loss::StatsScope::kMicrobatch && (multi || world > 1)
                         ? micro_loss_sum / static_cast<double>(micro.size() * world) : lm.loss) : NAN;
  m.loss_ce = lm.loss_ce;
  m.loss_imp = lm.loss_imp;
  m.loss_unimp = lm.loss_unimp;
  m.worst_group = lm.worst;
  m.count_imp = seen.count[1];
  m.count_unimp = seen.count[0];
  m.lambda = lambda;
  m.lr = lr;
  if (device.is_cuda()) torch::cuda::synchronize();
  m.step_s = timer.seconds();
  m.tokens_per_s = static_cast<double>(m.tokens) / std::max(1e-9, m.step_s);
  if (device.is_cuda()) m.mfu = 6.0 * static_cast<double>(n_params) * m.tokens_per_s / kH100PeakBf16Flops;
  return m;
}

std::string Trainer::Impl::save(const std::string& why) {
  Timer t;
  const std::string final_dir =
      (fs::path(checkpoint::checkpoints_root(cfg.run.output_dir)) / checkpoint::checkpoint_dir_name(step)).string();
  checkpoint::SaveRequest r;
  if (zero) {
    // Every rank writes its shard into a staging directory; rank 0 moves them into the checkpoint
    // before trainer_state.json marks it complete (a shared filesystem across nodes is assumed).
    const fs::path staging = fs::path(checkpoint::checkpoints_root(cfg.run.output_dir)) /
                             (".zero_staging_" + checkpoint::checkpoint_dir_name(step));
    fs::create_directories(staging);
    zero->save_shard((staging / dist::zero_shard_file_name(rank, world)).string());
    comm->barrier();
    for (int r2 = 0; r2 < world; ++r2) r.move_files.push_back((staging / dist::zero_shard_file_name(r2, world)).string());
  }
  if (rank != 0) {
    comm->barrier();  // rank 0 is writing
    return final_dir;
  }
  r.model = model.get();
  r.optimizer = optimizer.get();
  r.state.world_size = world;
  r.state.step = step;
  r.state.total_steps = total_steps;
  r.state.sampler_epoch = sampler->state().epoch;
  r.state.sampler_index = sampler->state().index;
  r.state.nan_skips = nan_skips;
  r.state.tokens_seen = tokens_seen;
  r.state.lambda = lambda_at(std::max<int64_t>(0, step - 1));
  r.state.rng_state_hex = checkpoint::cpu_rng_state_hex();
  r.state.config_yaml = config_to_yaml(cfg);
  r.resolved_config_yaml = r.state.config_yaml;
  r.tokenizer_files = tokenizer_files(cfg.tokenizer.path);
  if (mixed && !zero) r.master_weights = masters;
  std::string dir = checkpoint::save_checkpoint(cfg.run.output_dir, r, cfg.train.keep_last);
  if (zero) {
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
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("zero_rank", 0) == 0) shards.push_back(e.path().string());
  std::sort(shards.begin(), shards.end());
  SFTGO_CHECK_HINT(shards.empty() == !zero, ErrorKind::kConfig, "resume with the dist.zero1 setting the run was saved with",
                   dir, shards.empty() ? " was saved without ZeRO-1 (optimizer.pt), but dist.zero1 is on"
                                       : " holds ZeRO-1 optimizer shards, but dist.zero1 is off");
  if (zero) {
    zero->load_shards(shards);  // any saved world size: each shard file names its slice
  } else if (mixed) {
    auto saved = checkpoint::load_master_weights(dir);
    if (saved.empty()) log_warn("{} has no fp32 master weights: continuing from its bf16 weights", dir);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < masters.size(); ++i) {
      auto it = saved.find(masters[i].first);
      if (!saved.empty())
        SFTGO_CHECK(it != saved.end() && it->second.sizes() == masters[i].second.sizes(), ErrorKind::kFormat, dir,
                    "/master_weights.safetensors: missing or mis-shaped ", masters[i].first);
      masters[i].second.copy_(saved.empty() ? working[i].second.to(at::kFloat) : it->second);
    }
  }
  if (!zero) checkpoint::load_optimizer_state(dir, *optimizer);
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
  sampler->set_state(ss);
  step = st.step;
  nan_skips = st.nan_skips;
  tokens_seen = st.tokens_seen;
  elapsed_before = st.elapsed_s;
  if (!st.rng_state_hex.empty()) checkpoint::set_cpu_rng_state_hex(st.rng_state_hex);
  log_info("resumed from {} at step {}/{}", dir, step, total_steps);
}

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
                      "training stopped at step ", s.step, ": ", s.nan_skips, " steps had a non-finite loss or gradient (train.max_nan_skips = ",
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
