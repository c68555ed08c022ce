// The Trainer's evaluation loss, checkpoint save, exact resume, and the stop after too many non-finite steps.
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
#include "sftgo/core/format.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/zero.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/autocast.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"
#include "sftgo/train/updater.h"
#include "trainer_impl.h"

namespace fs = std::filesystem;

namespace sftgo::train {
namespace {
// The newest complete checkpoint of run_dir at a step below `step` (its weights ran step K+1 <= step),
// or "" when there is none.
std::string newest_checkpoint_before(const std::string& run_dir, int64_t step) {
  std::string best;
  for (const auto& dir : checkpoint::list_checkpoints(run_dir)) {  // oldest first
    const std::string name = fs::path(dir).filename().string();
    if (name.rfind("step_", 0) != 0) continue;
    try {
      // A weights-only checkpoint cannot be resumed: not one to point a user at.
      if (std::stoll(name.substr(5)) < step && !checkpoint::load_trainer_state(dir).weights_only) best = dir;
    } catch (const std::exception&) {
    }
  }
  return best;
}

// The tokenizer directory's files, copied into every checkpoint so it loads as a HF model dir; plus
// model.path's generation_config.json (its end-of-turn ids: HF's generate() stops on them).
std::vector<std::string> tokenizer_files(const std::string& path, const std::string& model_path) {
  fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  std::vector<std::string> files = {(dir / "tokenizer.json").string(), (dir / "tokenizer_config.json").string()};
  if (!model_path.empty()) {
    std::error_code ec;
    const fs::path gen = fs::path(model_path) / "generation_config.json";
    if (fs::is_regular_file(gen, ec)) files.push_back(gen.string());
  }
  return files;
}

int hex_value(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

}  // namespace

std::vector<std::string> gather_hex(dist::Comm& comm, const std::string& hex) {
  constexpr size_t kMaxBytes = 256;  // a CUDA (Philox) generator state is 16 bytes
  const size_t n = hex.size() / 2;
  SFTGO_CHECK(hex.size() % 2 == 0 && n <= kMaxBytes, ErrorKind::kInternal, "gather_hex: ", hex.size(),
              " hex digits, at most ", 2 * kMaxBytes, " and even expected");
  const size_t world = static_cast<size_t>(comm.world_size()), slot = 1 + kMaxBytes;
  std::vector<double> v(world * slot, 0.0);  // per rank: the byte count, then the bytes
  double* mine = v.data() + static_cast<size_t>(comm.rank()) * slot;
  mine[0] = static_cast<double>(n);
  for (size_t i = 0; i < n; ++i) mine[1 + i] = hex_value(hex[2 * i]) * 16 + hex_value(hex[2 * i + 1]);
  if (world > 1) v = comm.sum(v);  // one rank writes each slot: the sums are exact
  static const char* kHex = "0123456789abcdef";
  std::vector<std::string> out(world);
  for (size_t r = 0; r < world; ++r) {
    const double* p = v.data() + r * slot;
    for (size_t i = 0; i < static_cast<size_t>(p[0]); ++i) {
      const int b = static_cast<int>(p[1 + i]);
      out[r] += kHex[b >> 4];
      out[r] += kHex[b & 15];
    }
  }
  return out;
}

// ---- Evaluation, save, resume -----------------------------------------------------------------

// Mean losses over the whole eval set under the current weights (one set of group statistics). Rank r
// evaluates examples r, r + W, ...; the statistics are summed over ranks.
EvalMetrics Trainer::Impl::evaluate() {
  Timer timer;
  torch::NoGradGuard no_grad;
  const double lambda = lambdas.at(std::max<int64_t>(0, step - 1), total_steps);
  data::LoaderOptions lo = loader_options();
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

namespace {
// ZeRO-3: the weights a save reads, gathered layer by layer on every rank in the same order (rank 0
// as the writer reaches each layer's tensors, the others at once), so no rank holds the whole model.
class LayerStream {
 public:
  LayerStream(model::WeightResidency* r, int64_t blocks) : r_(r), blocks_(blocks) {
    if (r_) r_->acquire(model::WeightResidency::kOuterWeights, model::WeightResidency::kNone);
  }
  // The tensor `hf_name` is read next: its layer (and those before it) gathered, the previous released.
  void before(const std::string& hf_name) {
    static const std::string kPrefix = "model.layers.";
    if (hf_name.rfind(kPrefix, 0) == 0) up_to(std::stoll(hf_name.substr(kPrefix.size())));
  }
  // Every layer gathered once (also after a failed write: the other ranks' gathers must be matched).
  void finish() {
    up_to(blocks_ - 1);
    if (r_ && next_ > 0) r_->release(next_ - 1);
  }
  // LoRA: the adapters (a few MB) of every layer at once, released by release_all.
  void acquire_all() {
    for (int64_t b = 0; r_ && b < blocks_; ++b) r_->acquire(b, model::WeightResidency::kNone);
    next_ = blocks_;
    all_ = true;
  }
  void release_all() {
    for (int64_t b = 0; r_ && all_ && b < blocks_; ++b) r_->release(b);
  }

 private:
  void up_to(int64_t block) {
    for (; r_ && next_ <= block && next_ < blocks_; ++next_) {
      if (next_ > 0) r_->release(next_ - 1);
      r_->acquire(next_, model::WeightResidency::kNone);
    }
  }
  model::WeightResidency* r_;
  int64_t blocks_;
  int64_t next_ = 0;
  bool all_ = false;
};
}  // namespace

std::string Trainer::Impl::save(const std::string& why, bool weights_only) {
  Timer t;
  LayerStream layers(model->weight_residency(), model->config().num_hidden_layers);
  const bool lora = model::has_lora(*model);
  if (lora) layers.acquire_all();
  const fs::path root = checkpoint::checkpoints_root(cfg.run.output_dir);
  const std::string name = checkpoint::checkpoint_dir_name(step);
  checkpoint::SaveRequest r;
  // Files that every rank writes (ZeRO-1 shards) are staged beside the checkpoint, on the same filesystem.
  const fs::path staging = root / (".zero_staging_" + name);
  // Each rank's GPU generator (LoRA dropout draws from it), gathered on every rank (a collective).
  if (device.is_cuda()) r.state.cuda_rng_states_hex = gather_hex(*comm, checkpoint::rng_state_hex(device));
  if (!weights_only) updater->add_to_save(r, staging.string());  // the same choice on every rank
  if (std::any_of(r.move_files.begin(), r.move_files.end(),
                  [](const std::string& f) { return fs::path(f).filename().string().rfind("zero_rank", 0) == 0; }))
    add_zero_manifest(r, staging.string());
  if (rank != 0) {
    layers.finish();
    layers.release_all();
    comm->barrier();  // rank 0 is writing
    return (root / name).string();
  }
  r.model = model.get();
  r.state.world_size = world;
  r.state.weights_only = weights_only;
  r.state.step = step;
  r.state.total_steps = total_steps;
  r.state.sampler_epoch = loader->state().epoch;
  r.state.sampler_index = loader->state().index;
  r.state.nan_skips = nan_skips;
  r.state.tokens_seen = tokens_seen;
  r.state.elapsed_s = elapsed_s();  // a resume continues metrics.jsonl's elapsed_s and the ETA from here
  r.state.lambda = lambdas.at(std::max<int64_t>(0, step - 1), total_steps);
  r.state.rng_state_hex = checkpoint::cpu_rng_state_hex();
  if (best) r.state.best = best->state();  // train.save_best / early stopping, restored by a resume
  if (early_stop) r.state.early_stopping = early_stop->state();
  r.state.config_yaml = config_to_yaml(cfg);
  r.resolved_config_yaml = r.state.config_yaml;
  r.tokenizer_files = tokenizer_files(cfg.tokenizer.path, cfg.model.path);
  if (lora) {
    // The PEFT adapter directory (adapter_config.json + adapter_model.safetensors) moves into the
    // checkpoint with it; the checkpoint's HF weights are the frozen base.
    fs::create_directories(staging);
    model::save_lora_adapter(*model, (staging / "adapter").string());
    r.move_files.push_back((staging / "adapter").string());
  }
  if (!lora) r.before_weight = [&layers](const std::string& hf_name) { layers.before(hf_name); };
  std::string dir;
  try {
    dir = checkpoint::save_checkpoint(cfg.run.output_dir, r, cfg.train.keep_last);
  } catch (...) {
    layers.finish();
    throw;
  }
  layers.finish();
  layers.release_all();
  if (!r.move_files.empty()) {
    std::error_code ec;
    fs::remove_all(fs::path(r.move_files.front()).parent_path(), ec);
  }
  comm->barrier();
  log_info("saved checkpoint {} ({}{}, {:.1f}s)", dir, why, weights_only ? ", weights only" : "", t.seconds());
  return dir;
}

// ZeRO-1: every rank digests the shard it just wrote (its own file only: 12 bytes per parameter / W)
// and rank 0 writes zero_manifest.json, moved into the checkpoint with the shards (a collective).
void Trainer::Impl::add_zero_manifest(checkpoint::SaveRequest& r, const std::string& staging) {
  const dist::ZeroShardDigest mine =
      dist::zero_shard_digest((fs::path(staging) / dist::zero_shard_file_name(rank, world)).string());
  const std::vector<std::string> all = gather_hex(*comm, format("{:016x}", mine.bytes) + mine.hash);
  if (rank != 0) return;
  std::vector<dist::ZeroShardDigest> shards;
  for (int q = 0; q < world; ++q)
    shards.push_back({dist::zero_shard_file_name(q, world), std::stoull(all[static_cast<size_t>(q)].substr(0, 16), nullptr, 16),
                      all[static_cast<size_t>(q)].substr(16)});
  const std::string path = (fs::path(staging) / dist::kZeroManifestName).string();
  write_file_atomic(path, dist::zero_manifest_json(world, shards));
  r.move_files.push_back(path);
}

void Trainer::Impl::resume_from(const std::string& dir) {
  auto st = checkpoint::load_trainer_state(dir);
  SFTGO_CHECK_HINT(st.step <= total_steps, ErrorKind::kConfig,
                   "resume with train.max_steps (or train.epochs) at least the checkpoint's step, or start a new run",
                   dir, " is at step ", st.step, " but this run has only ", total_steps, " optimizer steps");
  if (st.config_yaml != config_to_yaml(cfg)) {
    const auto changes = config_changes(st.config_yaml, cfg);  // one line per key: old -> new
    if (!changes.empty())
      log_warn("resuming {} with a config that differs from the one it was saved with:\n  {}", dir,
               join(changes, "\n  "));
  }
  model::load_hf_weights(*model, dir);
  if (model::has_lora(*model)) model::load_lora_adapter(*model, (fs::path(dir) / "adapter").string());
  updater->resume(dir);
  data::SamplerState ss;
  ss.epoch = st.sampler_epoch;
  ss.index = st.sampler_index;
  if (st.world_size != world) {
    // Same global position in the epoch: every rank had consumed `index` of its share.
    const int64_t consumed = st.sampler_index * st.world_size;
    SFTGO_CHECK_HINT(consumed % world == 0, ErrorKind::kConfig,
                     "resume with a world size that divides the examples consumed", dir, " was saved by ",
                     st.world_size, " ranks at ", consumed, " examples into epoch ", st.sampler_epoch, ", which ",
                     world, " ranks cannot split evenly");
    ss.index = consumed / world;
    log_warn("resuming {} saved by {} ranks with {}: same examples per step, but epoch tails are padded per rank", dir,
             st.world_size, world);
  }
  loader->set_state(ss);
  step = st.step;
  nan_skips = st.nan_skips;
  tokens_seen = st.tokens_seen;
  elapsed_before = st.elapsed_s;
  if (best && st.best) best->restore(*st.best, dir);  // the best so far and the patience count continue
  if (early_stop && st.early_stopping) early_stop->restore(*st.early_stopping, dir);
  if (!st.rng_state_hex.empty()) checkpoint::set_cpu_rng_state_hex(st.rng_state_hex);
  restore_cuda_rng(st, dir);
  log_info("resumed from {} at step {}/{}", dir, step, total_steps);
}

// This rank's GPU generator as the same rank saved it, so LoRA dropout draws the masks the
// uninterrupted run would have. Another world size has no matching generator to continue.
void Trainer::Impl::restore_cuda_rng(const checkpoint::TrainerState& st, const std::string& dir) {
  if (!device.is_cuda()) return;
  if (st.cuda_rng_states_hex.empty()) {
    log_info("{} holds no CUDA random state (saved on the CPU or by an older version): the GPU generator keeps "
             "its seed",
             dir);
  } else if (st.world_size != world) {
    log_warn("{} holds the CUDA random states of {} ranks, this run has {}: not restored (LoRA dropout masks "
             "differ from an uninterrupted run)",
             dir, st.world_size, world);
  } else {
    checkpoint::set_rng_state_hex(device, st.cuda_rng_states_hex[static_cast<size_t>(rank)]);
  }
}

// After more than train.max_nan_skips non-finite steps in a row. The current weights are the ones that
// made these steps non-finite. Checkpoint step_K holds the weights that step K+1 ran with: the newest
// one whose next step was finite is the last good state, so point there and write (and prune) nothing
// over it. Only when no such checkpoint exists are the current weights saved, so there is something to
// inspect. Rank 0's view decides for all ranks (their collectives in save() must match).
void Trainer::Impl::stop_non_finite(int64_t last_finite) {
  const std::string good = rank == 0 ? newest_checkpoint_before(cfg.run.output_dir, last_finite) : "";
  const bool earlier = comm->sum({good.empty() ? 0.0 : 1.0})[0] > 0;
  const std::string dir =
      earlier ? (good.empty() ? std::string("(see rank 0)") : good) : save("before stopping on non-finite values");
  comm->shutdown();  // every rank reaches this step together
  SFTGO_FAIL_HINT(ErrorKind::kNumeric, "lower optim.lr, check the data, then --resume " + dir,
                  "training stopped at step ", step, ": ", nan_skips,
                  " steps in a row had a non-finite loss or gradient (train.max_nan_skips = ", cfg.train.max_nan_skips,
                  "); ",
                  earlier ? "the newest checkpoint whose next step was finite is "
                          : "no checkpoint holds weights whose next step was finite, so the current weights (those "
                            "of the last applied update, which produced the non-finite steps) are saved in ",
                  dir);
}

}  // namespace sftgo::train
