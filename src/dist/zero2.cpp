#include "sftgo/dist/zero2.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <numeric>

#include "sftgo/dist/buffer_pool.h"
#include "sftgo/core/error.h"

namespace sftgo::dist {

namespace {
// Buckets whose collectives may be in flight at once: the oldest is awaited (normally long done) and
// added into the shard before another starts, so bucket buffers hold about this many buckets, not the model.
constexpr size_t kInFlight = 2;
}  // namespace

struct ShardReducer::Impl {
  // One collective exchange of a bucket's values [lo, hi) of the flat vector: the whole bucket's reduces
  // (one per owning rank), or over Gloo one piece of it sent all-to-all.
  struct Transfer {
    size_t bucket = 0;
    int64_t lo = 0, hi = 0;
    std::vector<Work> works;
    at::Tensor send;  // all-to-all: the piece of the bucket buffer (kept alive until the wait)
    at::Tensor recv;  // all-to-all: [world x own] every rank's copy of this rank's part, by rank
    at::Tensor recv_base;  // the pool's buffer recv is the front of
  };

  std::shared_ptr<Comm> comm;
  ZeroOptimizer* zero = nullptr;
  std::vector<at::Tensor> params;
  std::vector<BucketPlan> plan;
  std::vector<std::pair<int64_t, int64_t>> range;  // bucket -> [lo, hi) of the flat vector
  std::vector<size_t> bucket_of;                   // param -> bucket
  std::vector<at::Tensor> buf;                     // bucket -> [hi - lo] fp32 while in use, else undefined
  std::vector<at::Tensor> buf_base;                // bucket -> the pool's buffer buf is the front of
  BufferPool pool;  // buckets and receive buffers, kept for the next micro-batch
  std::vector<int64_t> unsettled;                  // bucket -> its transfers not yet added to the shard
  std::deque<Transfer> flying;                     // started transfers, oldest first
  size_t buckets_flying = 0;                       // buckets with unsettled transfers
  std::vector<char> ready;                         // param's gradient arrived in this backward
  std::vector<int64_t> pending;                    // bucket -> params still missing in this backward
  size_t next_launch = 0;
  bool in_backward = false;
  // Gloo with several ranks: all-to-all pieces of `piece` values, their receive buffers (world x this
  // rank's part of a piece, so at most a bucket each) bounded by recv_budget values alive at once. Gloo's
  // reduce is a ring reduce-scatter followed by a gather to the root: with 2 ranks it sends 3/4 of a
  // bucket per rank where the all-to-all sends 1/2 (docs/benchmarks.md, ZeRO stages' speed). NCCL keeps
  // its pipelined reduce: (world - 1) / world against 1 bucket per rank, and no receive buffers.
  bool exchange = false;
  int64_t piece = 0, recv_budget = 0, recv_alive = 0;

  // Uninitialised: every parameter's gradient is copied into its segment, and end_backward zeroes the
  // segments of parameters that received none (a pass over the bucket saved per micro-batch).
  at::Tensor& buffer(size_t b) {
    if (!buf[b].defined()) {
      const int64_t n = range[b].second - range[b].first;
      buf_base[b] = pool.take(n, params.front().options().dtype(at::kFloat));
      buf[b] = buf_base[b].narrow(0, 0, n);
    }
    return buf[b];
  }

  // [a, e): rank r's part of [lo, hi) (empty when a >= e).
  std::pair<int64_t, int64_t> part(int r, int64_t lo, int64_t hi) const {
    const int64_t shard = zero->shard_size();
    return {std::max(lo, r * shard), std::min(hi, (r + 1) * shard)};
  }
  int64_t own_values(int64_t lo, int64_t hi) const {
    const auto [a, e] = part(comm->rank(), lo, hi);
    return std::max<int64_t>(0, e - a);
  }

  // The bucket's slice of each owning rank's shard goes to that rank: one reduce per owner.
  void start_reduces(size_t b) {
    Transfer t{b, range[b].first, range[b].second, {}, {}, {}, {}};
    for (int r = 0; r < comm->world_size(); ++r) {
      const auto [a, e] = part(r, t.lo, t.hi);
      if (a >= e) continue;
      at::Tensor slice = buf[b].narrow(0, a - t.lo, e - a);
      t.works.push_back(comm->reduce_async(slice, r));
    }
    flying.push_back(std::move(t));
  }

  // Every rank sends each owner its part of [lo, hi) and receives every rank's copy of its own part.
  void start_exchange(size_t b, int64_t lo, int64_t hi) {
    const int world = comm->world_size();
    Transfer t{b, lo, hi, {}, buf[b].narrow(0, lo - range[b].first, hi - lo), {}, {}};
    std::vector<int64_t> in_counts(world), out_counts(world, own_values(lo, hi));
    for (int r = 0; r < world; ++r) {
      const auto [a, e] = part(r, lo, hi);
      in_counts[r] = std::max<int64_t>(0, e - a);
    }
    t.recv_base = pool.take(world * out_counts[0], buf[b].options());
    t.recv = t.recv_base.narrow(0, 0, world * out_counts[0]);
    recv_alive += t.recv.numel();
    t.works.push_back(comm->all_to_all_async(t.recv, t.send, std::move(out_counts), std::move(in_counts)));
    flying.push_back(std::move(t));
  }

  void launch(size_t b) {
    SFTGO_CHECK(unsettled[b] == 0 && buf[b].defined(), ErrorKind::kInternal, "ZeRO-2: bucket ", b,
                " launched while its previous transfer is in flight");
    while (buckets_flying >= kInFlight) settle_oldest();
    ++buckets_flying;
    const int64_t lo = range[b].first, hi = range[b].second;
    if (!exchange) {
      unsettled[b] = 1;
      start_reduces(b);
      return;
    }
    unsettled[b] = (hi - lo + piece - 1) / piece;
    for (int64_t p = lo; p < hi; p += piece) {
      const int64_t e = std::min(hi, p + piece), need = comm->world_size() * own_values(p, e);
      while (!flying.empty() && recv_alive + need > recv_budget) settle_oldest();
      start_exchange(b, p, e);
    }
  }

  // Waits for the oldest started transfer and adds this rank's part of its sum into the gradient shard;
  // a bucket's buffer is freed with its last transfer.
  void settle_oldest() {
    Transfer t = std::move(flying.front());
    flying.pop_front();
    for (auto& w : t.works) w.wait();
    const int64_t begin = zero->shard_begin();
    const auto [a, e] = part(comm->rank(), t.lo, t.hi);
    torch::NoGradGuard no_grad;
    // With offload the shard is in host memory: one device-to-host copy of this rank's part (no-op on a CPU run).
    at::Tensor sums = zero->grad_shard();  // [shard] fp32
    if (a < e) {
      at::Tensor total;
      if (exchange) {
        // Summed in rank order (with 2 ranks exactly the reduce's sum: fp32 addition commutes).
        at::Tensor copies = t.recv.view({comm->world_size(), e - a});
        total = copies[0];
        for (int r = 1; r < comm->world_size(); ++r) total.add_(copies[r]);
      } else {
        total = buf[t.bucket].narrow(0, a - range[t.bucket].first, e - a);
      }
      sums.narrow(0, a - begin, e - a).add_(total.to(sums.device()));
    }
    if (t.recv.defined()) {
      recv_alive -= t.recv.numel();
      t.recv = t.send = at::Tensor();
      pool.give(std::move(t.recv_base));
    }
    if (--unsettled[t.bucket] == 0) {
      buf[t.bucket] = at::Tensor();  // back to the pool: the next micro-batch takes it again
      pool.give(std::move(buf_base[t.bucket]));
      --buckets_flying;
    }
  }

  void launch_ready() {
    while (next_launch < plan.size() && pending[next_launch] == 0) launch(next_launch++);
  }

  // End of one backward (queued by its first gradient): buckets that missed a gradient (a parameter
  // unused by this micro-batch: zeros) go out, so every rank reduces every bucket once per backward.
  void end_backward() {
    torch::NoGradGuard no_grad;
    for (size_t b = next_launch; b < plan.size(); ++b) {
      // Its zeros, not the previous micro-batch's sums still in flight.
      while (unsettled[b] > 0) settle_oldest();
      buffer(b);
      for (size_t i : plan[b].params) {
        const auto& seg = zero->segments()[i];
        if (!ready[i]) buf[b].narrow(0, seg.first - range[b].first, seg.second).zero_();
      }
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
    while (unsettled[b] > 0) settle_oldest();
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
  s.buf_base.resize(s.plan.size());
  s.unsettled.assign(s.plan.size(), 0);
  s.exchange = s.comm->backend() == "gloo" && s.comm->world_size() > 1;
  const int64_t bucket_values = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0) / 4);
  s.piece = std::max<int64_t>(1, bucket_values / s.comm->world_size());
  s.recv_budget = static_cast<int64_t>(kInFlight) * bucket_values;
  std::vector<int64_t> largest;  // values of the kInFlight + 1 largest buckets
  for (const auto& r : s.range) largest.push_back(r.second - r.first);
  std::sort(largest.rbegin(), largest.rend());
  largest.resize(std::min<size_t>(largest.size(), kInFlight + 1));
  // Host memory only: on a GPU the caching allocator reuses freed blocks, and kept buckets would hold
  // memory the next forward's activations can use.
  if (params.front().device().is_cpu())
    s.pool.set_cap(
        4 * (std::accumulate(largest.begin(), largest.end(), int64_t{0}) + (s.exchange ? s.recv_budget : 0)));
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
  while (!s.flying.empty()) s.settle_oldest();
}

}  // namespace sftgo::dist
