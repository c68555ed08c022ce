// The three Updaters (see updater.h). Each owns its optimizer state, its zero-grad and its part of a
// checkpoint, so the trainer's step, save and resume never ask which one is running.
#include "sftgo/train/updater.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <thread>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/core/timer.h"
#include "sftgo/core/torch_grad.h"
#include "sftgo/dist/zero.h"
#include "sftgo/dist/zero2.h"
#include "sftgo/dist/zero3.h"

namespace fs = std::filesystem;

namespace sftgo::train {
namespace {

// ZeRO-1 shard files of a checkpoint directory, sorted.
std::vector<std::string> zero_shards(const std::string& dir) {
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("zero_rank", 0) == 0) shards.push_back(e.path().string());
  std::sort(shards.begin(), shards.end());
  return shards;
}

void check_zero_setting(const std::string& dir, bool zero) {
  const bool has_shards = !zero_shards(dir).empty();
  SFTGO_CHECK_HINT(has_shards == zero, ErrorKind::kConfig, "resume with the dist.zero1 setting the run was saved with",
                   dir,
                   has_shards ? " holds ZeRO-1 optimizer shards, but dist.zero1 is off"
                              : " was saved without ZeRO-1 (optimizer.pt), but dist.zero1 is on");
}

// optimizer.pt into the rule optimizer, onto the parameters' device. The rule's own checks (another
// rule saved it, a tensor that does not fit) are told the file here.
void load_rule_state(const std::string& dir, optim::RuleOptimizer& optimizer) {
  const std::string path = (fs::path(dir) / "optimizer.pt").string();
  try {
    checkpoint::load_optimizer_state(dir, optimizer);
  } catch (const Error& e) {
    if (e.message().rfind(path, 0) == 0) throw;
    throw Error(e.kind(), path + ": " + e.message(), e.hint(), e.where());
  }
}

std::vector<at::Tensor> optimizer_params(const torch::optim::Optimizer& optimizer) {
  std::vector<at::Tensor> out;
  for (const auto& g : optimizer.param_groups())
    for (const auto& p : g.params()) out.push_back(p);
  return out;
}

// Gradients summed over ranks while the last backward runs (several ranks only).
std::unique_ptr<dist::GradReducer> make_reducer(const std::shared_ptr<dist::Comm>& comm,
                                                const optim::NamedParameters& params, double bucket_mb) {
  if (comm->world_size() <= 1) return nullptr;
  std::vector<at::Tensor> trainable;
  for (const auto& [name, p] : params)
    if (p.requires_grad()) trainable.push_back(p);
  return std::make_unique<dist::GradReducer>(comm, trainable, bucket_mb);
}

// The reducer's half of an Updater: arm before the last backward, wait after it, time the wait.
class ReducingUpdater : public Updater {
 public:
  void before_last_backward() override {
    if (reducer_) reducer_->arm();
  }
  void after_backward() override {
    if (!reducer_) return;
    Timer t;
    reducer_->finish();
    comm_s_ = t.seconds();
  }
  double comm_seconds() const override { return comm_s_; }

 protected:
  // Clip + the update rule over the optimizer's parameters; returns the norm (nothing changes when not
  // finite).
  double clip_and_step(double lr, double max_norm, bool finite) {
    const double norm = finite ? optim::clip_grad_norm(optimizer_params(*optimizer_), max_norm) : NAN;
    if (std::isfinite(norm)) {
      optim::set_lr(*optimizer_, lr);
      optimizer_->step();
    }
    return norm;
  }

  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<optim::RuleOptimizer> optimizer_;
  double comm_s_ = -1;
};

// The update rule over the model's own parameters.
class PlainUpdater final : public ReducingUpdater {
 public:
  PlainUpdater(const std::shared_ptr<dist::Comm>& comm, const optim::NamedParameters& params, const UpdaterOptions& o) {
    optimizer_ = std::make_unique<optim::RuleOptimizer>(params, o.rule);
    reducer_ = make_reducer(comm, params, o.bucket_mb);
  }
  UpdaterKind kind() const override { return UpdaterKind::kPlain; }
  double step(double lr, double max_norm, bool finite) override { return clip_and_step(lr, max_norm, finite); }
  void zero_grad() override {
    // With a reducer the gradients are views of its all-reduce buckets: zeroed in place, never freed.
    if (reducer_)
      reducer_->zero_grad();
    else
      optimizer_->zero_grad(true);
  }
  void add_to_save(checkpoint::SaveRequest& r, const std::string&) override { r.optimizer = optimizer_.get(); }
  void resume(const std::string& dir) override {
    check_zero_setting(dir, false);
    load_rule_state(dir, *optimizer_);
  }
};

// After each backward has added a bf16 parameter's gradient into its .grad: add it into the fp32
// master's gradient and free the bf16 one, so micro-batches accumulate in fp32 (as HF, DeepSpeed and
// Megatron's main grads do), not in bf16.
struct AccumulateIntoMaster : torch::autograd::PostAccumulateGradHook {
  at::Tensor master_grad;  // the fp32 master's .grad (a view of an all-reduce bucket with several ranks)
  explicit AccumulateIntoMaster(at::Tensor g) : master_grad(std::move(g)) {}
  void operator()(const torch::autograd::Variable& param) override {
    torch::NoGradGuard no_grad;
    add_in_slices(master_grad, param.grad());  // [same shape], fp32 += bf16
    const_cast<torch::autograd::Variable&>(param).mutable_grad().reset();
  }
};

// bf16 working weights; fp32 master weights carry the gradients (accumulated and all-reduced in fp32),
// the update and the rule's state.
class Fp32MastersUpdater final : public ReducingUpdater {
 public:
  Fp32MastersUpdater(const std::shared_ptr<dist::Comm>& comm, const optim::NamedParameters& params,
                     const UpdaterOptions& o)
      : working_(params) {
    for (const auto& [name, p] : working_)
      masters_.emplace_back(name, p.detach().to(at::kFloat).clone().set_requires_grad(p.requires_grad()));
    optimizer_ = std::make_unique<optim::RuleOptimizer>(masters_, o.rule);
    // Several ranks: the master gradients are views of fp32 all-reduce buckets. No autograd hook fires on
    // a master, so the reduction starts in after_backward (finish), after the last backward: an fp32
    // all-reduce that does not overlap the backward.
    reducer_ = make_reducer(comm, masters_, o.bucket_mb);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < working_.size(); ++i) {
      at::Tensor& master = masters_[i].second;
      if (!master.requires_grad()) continue;
      if (!master.grad().defined()) master.mutable_grad() = at::zeros_like(master);
      torch::autograd::impl::set_post_acc_grad_hooks(working_[i].second,
                                                     std::make_unique<AccumulateIntoMaster>(master.grad()));
    }
  }
  ~Fp32MastersUpdater() override {
    for (auto& [name, p] : working_)
      if (p.requires_grad()) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  }
  UpdaterKind kind() const override { return UpdaterKind::kFp32Masters; }
  double step(double lr, double max_norm, bool finite) override {
    // The fp32 master gradients already hold the step's sums: clipping and the rule work in fp32.
    const double norm = clip_and_step(lr, max_norm, finite);
    if (std::isfinite(norm)) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < masters_.size(); ++i) working_[i].second.copy_(masters_[i].second);
    }
    return norm;
  }
  void zero_grad() override {
    torch::NoGradGuard no_grad;
    if (reducer_) {
      reducer_->zero_grad();  // the buckets (the master gradients) in place
    } else {
      for (auto& [name, m] : masters_)
        if (m.grad().defined()) m.mutable_grad().zero_();
    }
    for (auto& [name, p] : working_) p.mutable_grad().reset();  // normally freed by the hook already
  }
  void add_to_save(checkpoint::SaveRequest& r, const std::string&) override {
    r.optimizer = optimizer_.get();
    r.master_weights = masters_;
  }
  void resume(const std::string& dir) override {
    check_zero_setting(dir, false);
    // Tensor by tensor into the masters: a resume needs no more memory than training.
    if (!checkpoint::load_master_weights_into(dir, masters_)) {
      log_warn("{} has no fp32 master weights: continuing from its bf16 weights", dir);
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < masters_.size(); ++i) masters_[i].second.copy_(working_[i].second);
    }
    load_rule_state(dir, *optimizer_);
  }

 private:
  optim::NamedParameters working_;  // the model's parameters
  optim::NamedParameters masters_;  // fp32 copies the optimizer updates
};

std::vector<at::Tensor> trained(const optim::NamedParameters& params) {
  std::vector<at::Tensor> out;
  for (const auto& [name, p] : params)
    if (p.requires_grad()) out.push_back(p);
  return out;
}

// Bytes of host memory available (MemAvailable of /proc/meminfo), or -1 when unknown. Tests set
// SFTGO_TEST_MEM_AVAILABLE_BYTES to play a small host.
int64_t host_memory_available() {
  if (const char* v = std::getenv("SFTGO_TEST_MEM_AVAILABLE_BYTES")) return std::strtoll(v, nullptr, 10);
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return -1;
}

// dist.offload_optimizer: cpu: every rank of this host keeps its fp32 master shard, the rule's state and
// its fp32 gradient shard in host memory. Refused at start, naming the key, when they cannot fit, rather
// than failing (or swapping) in the middle of the first step. Returns whether to offload.
bool offload_fits(const std::shared_ptr<dist::Comm>& comm, const optim::NamedParameters& params,
                  const UpdaterOptions& o) {
  if (!o.offload_optimizer) return false;
  int64_t n = 0;
  for (const auto& [name, p] : params)
    if (p.requires_grad()) n += p.numel();
  const int64_t shard = (n + comm->world_size() - 1) / comm->world_size();
  const auto tensors = static_cast<int64_t>(optim::make_update_rule(o.rule)->state_names().size()) + 2;
  const int64_t per_rank = tensors * 4 * shard, host = per_rank * o.local_ranks;
  const int64_t available = host_memory_available();
  // "1.23 GB", or MB below a gigabyte, so a small model's numbers do not all read 0.00.
  const auto gb = [](int64_t b) {
    return b >= 1'000'000'000 ? format("{:.2f} GB", static_cast<double>(b) / 1e9)
                              : format("{:.1f} MB", static_cast<double>(b) / 1e6);
  };
  SFTGO_CHECK_HINT(available < 0 || host <= available, ErrorKind::kConfig,
                   "use more ranks (or hosts) so each holds a smaller shard, or set dist.offload_optimizer: none",
                   format("dist.offload_optimizer: cpu needs {} of host memory ({} rank(s) on this host x {} of fp32 "
                          "master weights, optimizer state and gradient shard), but {} is available",
                          gb(host), o.local_ranks, gb(per_rank), gb(available)));
  const bool on_cpu = !params.empty() && params.front().second.device().is_cpu();
  if (comm->rank() == 0)
    log_info("dist.offload_optimizer: cpu: {} of fp32 master weights, optimizer state and gradient shard per rank "
             "in host memory ({} available){}",
             gb(per_rank), gb(available),
             on_cpu ? "; model.device is cpu, so this moves nothing (the state is in host memory already)" : "");
  return true;
}

// Trained parameter i -> its initial values, when the model was built without memory (ZeRO-3).
dist::ZeroOptimizer::InitialValues initial_values(const optim::NamedParameters& params, const UpdaterOptions& o) {
  if (!o.initial_values) return {};
  std::vector<std::string> names;
  for (const auto& [name, p] : params)
    if (p.requires_grad()) names.push_back(name);
  return [names, source = o.initial_values](size_t i) { return source(names.at(i)); };
}

// ZeRO-3's unit of a trained parameter: 1 + N for a name with ".layers.N." (HF's model.layers.N..., PEFT's
// base_model.model.model.layers.N... for adapters), 0 for the rest (embedding, norm, head): the decoder
// block N is unit N + 1.
std::vector<int> zero3_units(const optim::NamedParameters& params) {
  static const std::string kLayers = ".layers.";
  std::vector<int> out;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    const size_t at = name.find(kLayers);
    const size_t digits = at == std::string::npos ? at : at + kLayers.size();
    const bool numbered = digits != std::string::npos && digits < name.size() && std::isdigit(name[digits]) != 0;
    out.push_back(numbered ? 1 + std::stoi(name.substr(digits)) : 0);
  }
  return out;
}

// The model's blocks through ShardedParams' units (block b is unit b + 1, the outer weights unit 0).
class ShardedResidency final : public model::WeightResidency {
 public:
  explicit ShardedResidency(dist::ShardedParams& p) : p_(p) {}
  void acquire(int64_t block, int64_t next) override {
    p_.acquire(unit(block), next == kNone ? -1 : unit(next));
  }
  void release(int64_t block) override { p_.release(unit(block)); }
  int64_t blocks() const { return p_.num_units() - 1; }
  // The gathers one forward (dir 1) or one backward (dir -1) of the model issues, without computing:
  // a rank that aborted its step issues those of the passes the other ranks still run.
  void replay(int dir) {
    const int64_t n = blocks();
    for (int64_t k = 0; k < n; ++k) {
      const int64_t b = dir > 0 ? k : n - 1 - k, next = b + dir;
      acquire(b, next >= 0 && next < n ? next : kNone);
      release(b);
    }
  }

 private:
  static int unit(int64_t block) { return static_cast<int>(block + 1); }
  dist::ShardedParams& p_;
};

// ZeRO-1 keeps its own fp32 master shard, so bf16 runs need no full-size masters. ZeRO-2 (stage 2)
// also keeps only an fp32 gradient shard, filled during backward by a dist::ShardReducer; the update
// and the checkpoint shards are ZeRO-1's, so a run resumes from any stage. ZeRO-3 (stage 3) also
// frees the working weights: dist::ShardedParams gathers each block from the master shards around its
// forward and its recomputation in backward (on a process group of its own, so its broadcasts never
// interleave with stage 2's reduces).
class Zero1Updater final : public Updater {
 public:
  Zero1Updater(std::shared_ptr<dist::Comm> comm, const optim::NamedParameters& params, const UpdaterOptions& o,
               int stage)
      : comm_(std::move(comm)),
        zero_(comm_, params, o.rule, o.zero1_fp32_grads, stage >= 2,
              std::max<int64_t>(1, static_cast<int64_t>(o.bucket_mb * 1024.0 * 1024.0 / 4)),
              offload_fits(comm_, params, o), initial_values(params, o)) {
    if (stage >= 2) reducer_ = std::make_unique<dist::ShardReducer>(comm_, zero_, trained(params), o.bucket_mb);
    if (stage == 3) {
      zero_.gather_on_demand();
      sharded_ = std::make_unique<dist::ShardedParams>(comm_->subgroup("zero3"), zero_, trained(params),
                                                       zero3_units(params));
      residency_ = std::make_shared<ShardedResidency>(*sharded_);
    }
  }
  ~Zero1Updater() override {
    if (sharded_) sharded_->release_all();  // waits for gathers in flight
  }
  UpdaterKind kind() const override {
    return sharded_ ? UpdaterKind::kZero3 : reducer_ ? UpdaterKind::kZero2 : UpdaterKind::kZero1;
  }
  std::shared_ptr<model::WeightResidency> shard_weights() override {
    if (!sharded_) return nullptr;
    sharded_->release_all();
    log_info("ZeRO-3: weights sharded over {} rank(s); each of {} layers is gathered around its forward and its "
             "recomputation in backward, the embedding, final norm and head around each step",
             comm_->world_size(), sharded_->num_units() - 1);
    return residency_;
  }
  void skip_backward_passes(size_t n) override {
    // ZeRO-3: the aborted micro-batch's forward ran; the other ranks still run its backward and n - 1
    // forward and backward passes, each gathering every layer. Those gathers (on their own process
    // group) run on a thread beside the zero buckets below: the other ranks interleave both, and waiting
    // for a bucket while a gather they need first is not issued would stall them.
    std::exception_ptr failed;
    std::thread gathers;
    if (residency_)
      gathers = std::thread([this, n, &failed] {
        try {
          for (size_t i = 0; i < n; ++i) {
            if (i > 0) residency_->replay(1);
            residency_->replay(-1);
          }
        } catch (...) {
          failed = std::current_exception();
        }
      });
    for (size_t i = 0; reducer_ && i < n; ++i) reducer_->skip_backward();
    if (gathers.joinable()) gathers.join();
    if (failed) std::rethrow_exception(failed);
  }
  void after_backward() override {
    if (!reducer_) return;
    Timer t;
    reducer_->finish();
    wait_s_ = t.seconds();
  }
  double step(double lr, double max_norm, bool finite) override {
    Timer t;
    // The update changes the master shards: no gathered weight may outlive it.
    if (sharded_) sharded_->release_all();
    const double norm = zero_.step(lr, max_norm, finite);
    if (comm_->world_size() > 1) comm_s_ = t.seconds() + std::max(0.0, wait_s_);
    return norm;
  }
  void zero_grad() override { zero_.zero_grad(); }
  double comm_seconds() const override { return comm_s_; }
  void add_to_save(checkpoint::SaveRequest& r, const std::string& staging_dir) override {
    // Every rank writes its shard into the staging directory; rank 0 moves them all into the
    // checkpoint before trainer_state.json marks it complete (a filesystem shared by the nodes).
    fs::create_directories(staging_dir);
    const int world = comm_->world_size();
    zero_.save_shard((fs::path(staging_dir) / dist::zero_shard_file_name(comm_->rank(), world)).string());
    comm_->barrier();
    for (int r2 = 0; r2 < world; ++r2)
      r.move_files.push_back((fs::path(staging_dir) / dist::zero_shard_file_name(r2, world)).string());
  }
  void resume(const std::string& dir) override {
    check_zero_setting(dir, true);
    zero_.load_shards(zero_shards(dir));  // any saved world size: each shard file names its slice
  }

 private:
  std::shared_ptr<dist::Comm> comm_;
  dist::ZeroOptimizer zero_;
  std::unique_ptr<dist::ShardReducer> reducer_;  // ZeRO-2 and 3
  std::unique_ptr<dist::ShardedParams> sharded_;  // ZeRO-3 only
  std::shared_ptr<ShardedResidency> residency_;   // ZeRO-3 only
  double comm_s_ = -1, wait_s_ = -1;
};

}  // namespace

Updater::~Updater() = default;

std::unique_ptr<Updater> make_updater(UpdaterKind kind, std::shared_ptr<dist::Comm> comm,
                                      const optim::NamedParameters& params, const UpdaterOptions& options) {
  switch (kind) {
    case UpdaterKind::kPlain: return std::make_unique<PlainUpdater>(comm, params, options);
    case UpdaterKind::kFp32Masters: return std::make_unique<Fp32MastersUpdater>(comm, params, options);
    case UpdaterKind::kZero1: return std::make_unique<Zero1Updater>(std::move(comm), params, options, 1);
    case UpdaterKind::kZero2: return std::make_unique<Zero1Updater>(std::move(comm), params, options, 2);
    case UpdaterKind::kZero3: return std::make_unique<Zero1Updater>(std::move(comm), params, options, 3);
  }
  SFTGO_FAIL(ErrorKind::kInternal, "unknown updater kind");
}

}  // namespace sftgo::train
