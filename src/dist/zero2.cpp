#include "sftgo/dist/zero2.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>

#include "sftgo/core/error.h"

namespace sftgo::dist {

namespace {
// Buckets whose reduces may be in flight at once: the oldest is awaited (normally long done) and added
// into the shard before another starts, so bucket buffers hold about this many buckets, not the model.
constexpr size_t kInFlight = 2;
}  // namespace

struct ShardReducer::Impl {
  std::shared_ptr<Comm> comm;
  ZeroOptimizer* zero = nullptr;
  std::vector<at::Tensor> params;
  std::vector<BucketPlan> plan;
  std::vector<std::pair<int64_t, int64_t>> range;  // bucket -> [lo, hi) of the flat vector
  std::vector<size_t> bucket_of;                   // param -> bucket
  std::vector<at::Tensor> buf;                     // bucket -> [hi - lo] fp32 while in use, else undefined
  std::vector<std::vector<Work>> works;            // bucket -> in-flight reduces (one per owning rank)
  std::vector<size_t> launched;                    // buckets in launch order, not yet added to the shard
  std::vector<char> ready;                         // param's gradient arrived in this backward
  std::vector<int64_t> pending;                    // bucket -> params still missing in this backward
  size_t next_launch = 0;
  bool in_backward = false;

  at::Tensor& buffer(size_t b) {
    if (!buf[b].defined())
      buf[b] = at::zeros({range[b].second - range[b].first}, params.front().options().dtype(at::kFloat));
    return buf[b];
  }

  // The bucket's slice of each owning rank's shard goes to that rank: one reduce per owner.
  void launch(size_t b) {
    const int64_t shard = zero->shard_size(), lo = range[b].first, hi = range[b].second;
    at::Tensor& t = buffer(b);
    for (int r = 0; r < comm->world_size(); ++r) {
      const int64_t a = std::max(lo, r * shard), e = std::min(hi, (r + 1) * shard);
      if (a >= e) continue;
      at::Tensor part = t.narrow(0, a - lo, e - a);
      works[b].push_back(comm->reduce_async(part, r));
    }
    if (comm->world_size() == 1) works[b].emplace_back();
    launched.push_back(b);
  }

  // Waits for the oldest launched bucket and adds this rank's part of its sum into the gradient shard.
  void settle_oldest() {
    const size_t b = launched.front();
    launched.erase(launched.begin());
    for (auto& w : works[b]) w.wait();
    works[b].clear();
    const int64_t shard = zero->shard_size(), begin = zero->shard_begin();
    const int64_t a = std::max(range[b].first, begin), e = std::min(range[b].second, begin + shard);
    torch::NoGradGuard no_grad;
    // With offload the shard is in host memory: one device-to-host copy of this rank's part (no-op on a CPU run).
    at::Tensor sums = zero->grad_shard();  // [shard] fp32
    if (a < e) sums.narrow(0, a - begin, e - a).add_(buf[b].narrow(0, a - range[b].first, e - a).to(sums.device()));
    buf[b] = at::Tensor();  // freed: the next micro-batch allocates it again
  }

  void launch_ready() {
    while (next_launch < plan.size() && pending[next_launch] == 0) {
      while (launched.size() >= kInFlight) settle_oldest();
      launch(next_launch++);
    }
  }

  // End of one backward (queued by its first gradient): buckets that missed a gradient (a parameter
  // unused by this micro-batch: zeros) go out, so every rank reduces every bucket once per backward.
  void end_backward() {
    torch::NoGradGuard no_grad;
    for (size_t b = next_launch; b < plan.size(); ++b) {
      buffer(b);
      pending[b] = 0;
    }
    launch_ready();
    std::fill(ready.begin(), ready.end(), 0);
    for (size_t b = 0; b < plan.size(); ++b) pending[b] = static_cast<int64_t>(plan[b].params.size());
    next_launch = 0;
    in_backward = false;
  }

  void on_grad(size_t i) {
    if (!in_backward) {
      in_backward = true;
      torch::autograd::Engine::get_default_engine().queue_callback([this] { end_backward(); });
    }
    SFTGO_CHECK(!ready[i], ErrorKind::kInternal, "ZeRO-2: parameter ", i,
                " received a second gradient in one backward pass");
    torch::NoGradGuard no_grad;
    const size_t b = bucket_of[i];
    const auto& seg = zero->segments()[i];
    // A bucket still in flight from the previous micro-batch is settled before its buffer is reused.
    while (!works[b].empty()) settle_oldest();
    buffer(b).narrow(0, seg.first - range[b].first, seg.second).copy_(params[i].grad().reshape({-1}));
    params[i].mutable_grad().reset();
    ready[i] = 1;
    --pending[b];
    launch_ready();
  }
};

namespace {
struct ShardHook : torch::autograd::PostAccumulateGradHook {
  ShardReducer::Impl* impl;
  size_t index;
  ShardHook(ShardReducer::Impl* s, size_t i) : impl(s), index(i) {}
  void operator()(const torch::autograd::Variable&) override { impl->on_grad(index); }
};
}  // namespace

ShardReducer::ShardReducer(std::shared_ptr<Comm> comm, ZeroOptimizer& zero, const std::vector<at::Tensor>& params,
                           double bucket_mb)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.comm = std::move(comm);
  s.zero = &zero;
  s.params = params;
  SFTGO_CHECK(params.size() == zero.segments().size(), ErrorKind::kInternal, "ZeRO-2: ", params.size(),
              " parameters, the optimizer has ", zero.segments().size());
  std::vector<int64_t> numels, sizes(params.size(), 4);  // buckets are fp32
  for (const auto& p : params) numels.push_back(p.numel());
  s.plan = plan_buckets(numels, sizes, std::vector<std::string>(params.size(), "fp32"),
                        std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0)));
  s.bucket_of.resize(params.size());
  for (size_t b = 0; b < s.plan.size(); ++b) {
    // Reverse parameter order: the bucket's last parameter starts its flat range.
    const auto& segs = zero.segments();
    const size_t first = s.plan[b].params.back(), last = s.plan[b].params.front();
    s.range.emplace_back(segs[first].first, segs[last].first + segs[last].second);
    for (size_t i : s.plan[b].params) s.bucket_of[i] = b;
  }
  s.buf.resize(s.plan.size());
  s.works.resize(s.plan.size());
  s.ready.assign(params.size(), 0);
  for (const auto& b : s.plan) s.pending.push_back(static_cast<int64_t>(b.params.size()));
  for (size_t i = 0; i < params.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(s.params[i], std::make_unique<ShardHook>(&s, i));
}

ShardReducer::~ShardReducer() {
  for (auto& p : impl_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

size_t ShardReducer::num_buckets() const { return impl_->plan.size(); }

void ShardReducer::skip_backward() {
  Impl& s = *impl_;
  SFTGO_CHECK(!s.in_backward, ErrorKind::kInternal, "ZeRO-2: a backward was skipped while one was running");
  s.in_backward = true;
  s.end_backward();  // no gradient arrived: every bucket is launched with a zero buffer
}

void ShardReducer::finish() {
  Impl& s = *impl_;
  while (!s.launched.empty()) s.settle_oldest();
}

}  // namespace sftgo::dist
