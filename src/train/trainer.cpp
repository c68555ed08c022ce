// The Trainer: the step pipeline and the run loop. Strategies live behind interfaces (Updater for how
// gradients become an update, DynamicGroupingFunction for groups chosen per step, the WeightsPlan for
// how the loss coefficients are decided); the set-up chain is in setup.cpp, evaluation, save and
// resume in state.cpp. See docs/architecture.md, "One training step".
#include "sftgo/train/trainer.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <unistd.h>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/malloc_tuning.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/timer.h"
#include "sftgo/core/version.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/loader.h"
#include "sftgo/dist/dist.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/loss/group_loss.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/optim/optim.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "sftgo/train/options.h"
#include "sftgo/train/report.h"
#include "sftgo/train/updater.h"
#include "trainer_impl.h"

namespace fs = std::filesystem;

namespace sftgo::train {
// ---- The step pipeline ------------------------------------------------------------------------
//   assemble the micro-batches -> decide the loss weights -> forward/backward each micro-batch ->
//   one reduction over ranks -> the update -> metrics

StepMetrics Trainer::Impl::train_step() {
  Timer timer;
  if (device.is_cuda()) dist::reset_gpu_peak_memory(device);
  const double lambda = lambdas.at(step, total_steps);
  const double lr = optim::lr_at(schedule, step);
  std::vector<MicroBatch> micro = assemble_step();
  StepWeights weights = decide_weights(micro, lambda);
  const StepTotals totals = backward_passes(micro, weights, lambda);
  stop_all = totals.stop;
  const double grad_norm = updater->step(lr, cfg.optim.grad_clip, totals.finite);
  updater->zero_grad();
  ++step;
  StepMetrics m = step_metrics(weights, totals, lambda, lr);
  m.grad_norm = grad_norm;
  m.skipped = !std::isfinite(grad_norm);
  nan_skips = m.skipped ? nan_skips + 1 : 0;
  tokens_seen += m.tokens;
  dist::synchronize_device(device);  // the rank's own GPU (no-op on the CPU)
  m.step_s = timer.seconds();
  m.tokens_per_s = static_cast<double>(m.tokens) / std::max(1e-9, m.step_s);
  if (device.is_cuda()) gpu_metrics(m, gpu_peak.flops > 0 ? local_flops(micro) : 0.0);
  return m;
}

// Padding adds 0 to the sum of positions, each real token its position: add 1 per real token.
int64_t attention_pairs(const MicroBatch& b) { return b.positions.sum().item<int64_t>() + b.tokens; }

// This rank's model FLOPs of the step (FlopsModel): its micro-batches' tokens, trained tokens and
// attention pairs.
double Trainer::Impl::local_flops(const std::vector<MicroBatch>& micro) const {
  double total = 0;
  for (const auto& b : micro)
    total += training_flops(flops, static_cast<double>(b.tokens), static_cast<double>(b.trained),
                            static_cast<double>(attention_pairs(b)));
  return total;
}

// MFU against the GPU actually found (all ranks' model FLOPs over all ranks' peak), and the step's
// peak GPU memory: the maximum over ranks (each rank fills its own slots of one small all-reduce).
void Trainer::Impl::gpu_metrics(StepMetrics& m, double flops_here) {
  const dist::GpuMemory mem = dist::gpu_memory(device);
  std::vector<double> slots(2 * static_cast<size_t>(world) + 1, 0.0);
  slots[2 * static_cast<size_t>(rank)] = static_cast<double>(mem.peak_allocated);
  slots[2 * static_cast<size_t>(rank) + 1] = static_cast<double>(mem.peak_reserved);
  slots.back() = flops_here;
  if (world > 1) slots = comm->sum(slots);
  if (gpu_peak.flops > 0) m.mfu = model_flops_utilization(slots.back(), m.step_s, world, gpu_peak.flops);
  double allocated = 0, reserved = 0;
  for (size_t r = 0; r < static_cast<size_t>(world); ++r) {
    allocated = std::max(allocated, slots[2 * r]);
    reserved = std::max(reserved, slots[2 * r + 1]);
  }
  m.gpu_mem_allocated_gb = allocated / 1e9;
  m.gpu_mem_reserved_gb = reserved / 1e9;
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

// The run's WeightsPolicy (step_weights.h): loss.step_stats auto speculates where the result is bit
// for bit the pre-pass's. SFTGO_TEST_BET_AGAINST=1 (tests only) bets on the previous step's losing
// group and redoes every speculated step, so the redo path runs (after won and lost bets alike) and
// must still match the pre-pass.
void Trainer::Impl::choose_weights_policy() {
  const bool dropout = cfg.lora.enabled && cfg.lora.dropout > 0;
  const bool groups_from_forward = dynamic && !dynamic->separate_forward();
  weights_policy.objective = objective;
  weights_policy.scope = scope;
  weights_policy.speculate =
      resolve_step_stats(parse_step_stats(cfg.loss.step_stats), dropout, groups_from_forward);
  const char* against = std::getenv("SFTGO_TEST_BET_AGAINST");
  bet_against = against && std::string(against) == "1";
  // SFTGO_TEST_NONFINITE_AT=RANK:STEP (tests only): that rank's step STEP fails as a non-finite loss
  // would, at its first micro-batch, while the other ranks run theirs (the one-rank abort path).
  if (const char* at = std::getenv("SFTGO_TEST_NONFINITE_AT")) {
    const std::string spec = at;
    const auto colon = spec.find(':');
    if (colon != std::string::npos && std::stoi(spec.substr(0, colon)) == rank)
      injected_nonfinite_step = std::stoll(spec.substr(colon + 1));
  }
}

// The step's WeightsPlan, with what it needs before the forwards: the group sizes summed over ranks
// (known from the labels, or promised by a dynamic function), or the stats pre-pass.
StepWeights Trainer::Impl::decide_weights(std::vector<MicroBatch>& micro, double lambda) {
  StatsReduce reduce = [this](const loss::GroupStats& local, bool* finite) {
    return world > 1 ? all_reduce_stats(*comm, local, finite) : local;
  };
  const int bet = bet_against && predicted_worst >= 0 ? 1 - predicted_worst : predicted_worst;
  StepWeights w(weights_policy, lambda, micro.size(), world, std::move(reduce), bet);
  loss::GroupStats counts;
  for (const auto& b : micro) counts += group_counts(b);
  if (w.set_counts(counts)) {
    bool finite = true;
    const loss::GroupStats stats = stats_pre_pass(micro, lambda, &finite);
    w.pre_pass_done(stats, finite);
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

// The step's forward/backward passes and their reduction over ranks. A speculated step whose bet lost
// discards its gradients and runs again with the right coefficients, from the same generator state
// (LoRA dropout draws the same masks) and with its groups chosen again by the forward, so it ends
// exactly as a step that had known them: as the pre-pass plan.
StepTotals Trainer::Impl::backward_passes(std::vector<MicroBatch>& micro, StepWeights& w, double lambda) {
  at::Tensor rng;              // the generator's state before the forwards
  std::vector<size_t> chosen;  // micro-batches whose groups the training forward chooses
  if (w.speculating()) {
    ++speculated_steps;
    rng = at::globalContext().defaultGenerator(device).get_state();
    for (size_t i = 0; i < micro.size(); ++i)
      if (!micro[i].groups.defined()) chosen.push_back(i);
  }
  StepTotals t = forward_backward(micro, w, lambda);
  reduce_totals(t);
  // The same decision on every rank (summed stats). Tests (bet_against) redo every speculated step.
  const bool lost = t.finite && w.confirm(t.seen);
  const bool redo = lost || (bet_against && t.finite && rng.defined());
  if (redo) {
    ++redone_steps;
    log_info("step {}: {}; step redone ({} of {} speculated steps)", step + 1,
             lost ? "the worst group was not the predicted one" : "redo forced (SFTGO_TEST_BET_AGAINST)", redone_steps,
             speculated_steps);
    updater->zero_grad();
    at::Generator gen = at::globalContext().defaultGenerator(device);
    gen.set_state(rng);
    for (size_t i : chosen) micro[i].groups = at::Tensor();
    t = forward_backward(micro, w, lambda);
    reduce_totals(t);
  }
  // The next step bets on this step's worst group (a skipped step: the next takes the pre-pass).
  if (weights_policy.speculate) predicted_worst = t.finite ? w.metrics_weights(t.seen).worst : -1;
  return t;
}

// On every rank, also after an aborted step (collectives stay matched): the skip decision, the stop
// request, the step-wide statistics.
void Trainer::Impl::reduce_totals(StepTotals& t) {
  updater->after_backward();
  t.stop = stop_requested();
  if (world > 1) t.all_reduce(*comm);
}

StepTotals Trainer::Impl::forward_backward(std::vector<MicroBatch>& micro, StepWeights& w, double lambda) {
  StepTotals t;
  t.finite = w.finite();
  for (const auto& b : micro) t.tokens += b.tokens;
  for (size_t i = 0; t.finite && i < micro.size(); ++i) {
    MicroBatch& b = micro[i];
    loss::FusedLossOptions opts = loss_options(lambda, b);
    w.configure(opts, group_counts(b));  // the coefficients, or the hook that decides them
    loss::LossInfo info;
    try {
      at::Tensor hidden = forward_hidden(b);  // [T,H]
      // Injected where a real non-finite loss is found: after the forward (ZeRO-3 replays what follows).
      SFTGO_CHECK(i > 0 || injected_nonfinite_step != step + 1, ErrorKind::kNumeric,
                  "non-finite loss injected by SFTGO_TEST_NONFINITE_AT (tests only)");
      at::Tensor l = loss::fused_group_loss(hidden, head_weight(), b.labels, b.groups, opts, &info);
      if (w.loss_scale() != 1.0) l = l * w.loss_scale();
      if (i + 1 == micro.size()) updater->before_last_backward();  // reduce while the last backward runs
      l.backward();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kNumeric) throw;
      log_warn("step {}: {}", step + 1, e.message());
      t.finite = false;
      updater->skip_backward_passes(micro.size() - i);  // others may run theirs: collectives stay matched
      break;
    }
    // The sizes every plan decided from (counts, promised groups) are those the loss counted.
    const loss::GroupStats& seen = info.local_stats;
    SFTGO_CHECK(seen.count[1] == b.important && seen.total_count() == b.trained, ErrorKind::kInternal,
                "micro-batch ", i, ": the loss counted ", seen.count[1], " important of ", seen.total_count(),
                " trained tokens, the step decided its coefficients for ", b.important, " of ", b.trained);
    t.seen += seen;
    t.micro_loss_sum += info.metrics.loss;
  }
  return t;
}

StepMetrics Trainer::Impl::step_metrics(const StepWeights& w, const StepTotals& t, double lambda, double lr) {
  // Metrics of the whole step from the summed statistics, under the coefficients StepWeights applied.
  const loss::LossMetrics lm = loss::compute_loss_metrics(t.seen, w.metrics_weights(t.seen), lambda);
  StepMetrics m;
  m.step = step;
  m.epoch = static_cast<double>(loader->state().epoch) +
            static_cast<double>(loader->state().index) /
                static_cast<double>(std::max<int64_t>(1, loader->examples_per_epoch()));
  m.loss = t.finite ? w.step_loss(t.seen, t.micro_loss_sum) : NAN;
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

// [V,H]: the model's head (tied, untied, or with its LoRA adapter folded in) as the precision
// policy has the loss see it.
at::Tensor Trainer::Impl::head_weight() const { return precision->loss_head(model->head_weight()); }

at::Tensor Trainer::Impl::forward_hidden(const MicroBatch& b) {
  at::Tensor hidden;  // [B,S,H]
  {
    // The policy's region (autocast, or none) covers the model forward only; checkpointed blocks
    // re-enter its state for their recomputation.
    const auto region = precision->forward_region(device.type());
    hidden = model->forward(b.ids, b.positions, b.mask);
  }
  const int64_t S = hidden.size(1), H = hidden.size(2);
  // Only trained positions reach the LM head: prompt tokens cost no [T x V] work at all.
  hidden = hidden.slice(1, 0, S - 1).reshape({-1, H}).index_select(0, b.view.select);
  return precision->loss_hidden(hidden);  // [T,H] in the dtype the policy's loss takes
}

// ---- Trainer ----------------------------------------------------------------------------------

Trainer::Trainer(LoadedConfig config, TrainerHooks hooks)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(hooks))) {
  log_debug("{}", tune_malloc_for_training());  // before the model and optimizer allocate (core/malloc_tuning.h)
  impl_->setup();
  impl_->flops = flops_model(*impl_->model);  // adapters and frozen weights are final now
}

Trainer::~Trainer() = default;

std::vector<std::pair<std::string, at::Tensor>> Trainer::named_parameters() const {
  SFTGO_CHECK_HINT(impl_->model->weight_residency() == nullptr, ErrorKind::kUsage,
                   "read the run's checkpoint (model.safetensors) instead",
                   "with dist.zero: 3 the trained weights are sharded over the ranks after training");
  return impl_->model->hf_named_parameters();
}

// Run files (rank 0 only; metrics are already reduced over ranks): the resolved config, versions, and
// metrics.jsonl (a resume drops lines past its step).
std::unique_ptr<MetricsLog> Trainer::Impl::open_run_files(bool resumed) {
  if (rank != 0) return nullptr;
  const fs::path out(cfg.run.output_dir);
  write_file_atomic((out / "resolved_config.yaml").string(), config_to_yaml(cfg));
  nlohmann::json versions = {{"sftgo", version_string()},         {"git", git_hash()},      {"libtorch", TORCH_VERSION},
                             {"cuda_kernels", built_with_cuda()}, {"device", device.str()}, {"world_size", world}};
  write_file_atomic((out / "versions.json").string(), versions.dump(1) + "\n");
  return std::make_unique<MetricsLog>((out / "metrics.jsonl").string(), resumed ? step : -1);
}

void Trainer::Impl::print_progress(const StepMetrics& m, bool tty) const {
  const bool with_lambda = objective == loss::Objective::kSftGo;  // ce and rho1 do not use it
  if (tty && is_rank0()) {
    std::fprintf(stderr, "\r\033[K%s %s", progress_bar(step, total_steps).c_str(),
                 progress_line(m, total_steps, with_lambda).c_str());
    if (step == total_steps || m.skipped) std::fprintf(stderr, "\n");
  } else if (step % cfg.train.log_every == 0 || step == total_steps || m.skipped) {
    log_info("{}", progress_line(m, total_steps, with_lambda));
  }
}

TrainResult Trainer::run(const std::string& resume) {
  Impl& s = *impl_;
  const Config& cfg = s.cfg;
  TrainResult result;
  s.prepare_eval_tracking();  // before a resume restores the trackers
  fs::create_directories(cfg.run.output_dir);
  if (!resume.empty() && s.resume_for_run(resume)) {
    result.steps = s.step;
    return result;
  }
  // ZeRO-3: from here on each layer's weights exist only around its use (the resume above still
  // loaded whole tensors).
  if (auto residency = s.updater->shard_weights()) s.model->set_weight_residency(std::move(residency));
  const std::unique_ptr<MetricsLog> metrics_log = s.open_run_files(!resume.empty());
  // Rank 0's tracker follower (logging.report_to) tails metrics.jsonl; its destructor, on every way out
  // of run(), ends its input and waits a bounded time for it. A run at step 0 starts new tracker runs.
  const auto follower = s.rank == 0 ? TrackerFollower::start(cfg, s.step == 0) : nullptr;
  auto write_metrics = [&](const auto& m) {
    if (metrics_log) metrics_log->write(m);
  };
  const bool tty = ::isatty(2);
  const bool evals = !s.eval_set.examples.empty();
  Timer wall;
  s.run_wall.reset();  // elapsed_s continues from the checkpoint's across a resume
  int64_t last_saved = -1, last_eval = -1;
  int64_t ran = 0;               // steps run by this process
  int64_t last_finite = s.step;  // the newest step that applied an update
  bool stop_early = false;       // train.early_stopping_*: decided by rank 0 for every rank
  auto evaluate = [&] {
    last_eval = s.step;
    stop_early = s.evaluate_and_track(metrics_log.get(), last_saved, result.last_checkpoint);
  };
  // A fresh run's held-out curve starts at the initial weights (step 0), as its training curve does.
  // Evaluation runs without gradients, so it draws no random numbers and leaves training unchanged.
  if (evals && s.step == 0) evaluate();
  while (s.step < s.total_steps) {
    StepMetrics m = s.train_step();
    m.elapsed_s = s.elapsed_s();
    write_metrics(m);
    if (ran++ == 0) result.first_loss = m.loss;
    result.last_loss = m.loss;
    result.steps = s.step;
    if (m.skipped)
      ++result.skipped_steps;
    else
      last_finite = s.step;
    s.print_progress(m, tty);
    if (s.nan_skips > cfg.train.max_nan_skips) s.stop_non_finite(last_finite);
    if (evals && cfg.train.eval_every > 0 && s.step % cfg.train.eval_every == 0) evaluate();
    if (s.hooks.on_step && !s.hooks.on_step(m)) return result;  // simulated kill: no final save
    if (cfg.train.save_every > 0 && s.step % cfg.train.save_every == 0 && s.step < s.total_steps &&
        last_saved != s.step) {
      result.last_checkpoint = s.save("periodic", cfg.train.intermediate_checkpoints == "weights");
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
    if (stop_early) break;  // logged by evaluate_and_track; the final save below as usual
  }
  if (evals && last_eval != s.step) evaluate();
  s.finish_run(result, last_saved, ran, wall.seconds());
  return result;
}

// A finished run resumed with the same step count: nothing to train, so nothing is rewritten
// (checkpoint, metrics.jsonl, run files) and no "final loss" of a step that did not run is printed.
// So is one that early stopping ended (its patience, restored, is still used up).
bool Trainer::Impl::resume_for_run(const std::string& resume) {
  auto dir = checkpoint::resolve_resume_dir(resume, cfg.run.output_dir);
  if (!dir) {
    log_info("--resume auto: no checkpoint in {}, starting fresh", cfg.run.output_dir);
    return false;
  }
  resume_from(*dir);
  if (stopped_early_before())
    log_info("{} stopped early at step {}: nothing to do", cfg.run.output_dir, step);
  else if (step >= total_steps)
    log_info("{} is already complete at step {}: nothing to do (raise train.max_steps to train further)",
             cfg.run.output_dir, step);
  else
    return false;
  comm->shutdown();
  return true;
}

void Trainer::Impl::finish_run(TrainResult& result, int64_t last_saved, int64_t ran, double wall_s) {
  // train.save_final: false skips only this save (a run that measures needs no multi-GB checkpoint);
  // metrics.jsonl is complete either way, and a stop request in the loop still saves, so it can resume.
  if (!cfg.train.save_final)
    log_info("train.save_final is false: no checkpoint of step {} written", step);
  else if (last_saved != step)
    result.last_checkpoint = save("final");
  comm->shutdown();
  // Fewer skips than train.max_nan_skips, but not one update applied: not a trained model.
  SFTGO_CHECK_HINT(ran == 0 || result.skipped_steps < ran, ErrorKind::kNumeric, "lower optim.lr or check the data",
                   "every one of the ", ran,
                   " steps of this run had a non-finite loss or gradient: no update was applied");
  log_info("done: {} steps in {}, final loss {:.4f}", step, format_duration(wall_s), result.last_loss);
}

}  // namespace sftgo::train
