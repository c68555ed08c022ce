#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include "sftgo/core/error.h"
#include "sftgo/dist/dist.h"

namespace sftgo::dist {

std::vector<BucketPlan> plan_buckets(const std::vector<int64_t>& numels, const std::vector<int64_t>& element_sizes,
                                     const std::vector<std::string>& keys, int64_t bucket_bytes) {
  SFTGO_CHECK(numels.size() == element_sizes.size() && numels.size() == keys.size(), ErrorKind::kInternal,
              "plan_buckets: ", numels.size(), " numels, ", element_sizes.size(), " sizes, ", keys.size(), " keys");
  std::vector<BucketPlan> out;
  int64_t bytes = 0;
  std::string key;
  for (size_t k = numels.size(); k-- > 0;) {
    const int64_t b = numels[k] * element_sizes[k];
    if (out.empty() || keys[k] != key || (bytes > 0 && bytes + b > bucket_bytes)) {
      out.emplace_back();
      bytes = 0;
      key = keys[k];
    }
    out.back().params.push_back(k);
    out.back().numel += numels[k];
    bytes += b;
  }
  return out;
}

struct GradReducer::Impl {
  std::shared_ptr<Comm> comm;
  std::vector<at::Tensor> params;
  std::vector<BucketPlan> plan;
  std::vector<at::Tensor> flat;           // per bucket [numel], the params' dtype and device
  std::vector<size_t> bucket_of;          // param -> bucket
  std::vector<int64_t> offset;            // param -> offset in its bucket
  std::vector<char> ready;                // param has its gradient in the bucket
  std::vector<int64_t> pending;           // bucket -> params still missing
  std::vector<Work> works;                // bucket -> in-flight all-reduce
  size_t next_launch = 0;                 // buckets launch strictly in order on every rank
  bool armed = false;

  at::Tensor slot(size_t i) { return flat[bucket_of[i]].narrow(0, offset[i], params[i].numel()); }

  void put(size_t i) {
    const at::Tensor& g = params[i].grad();
    if (g.defined()) slot(i).copy_(g.reshape({-1}));
    else slot(i).zero_();
  }

  void launch_ready() {
    while (next_launch < plan.size() && pending[next_launch] == 0) {
      works[next_launch] = comm->all_reduce_async(flat[next_launch]);
      ++next_launch;
    }
  }

  void on_grad(size_t i) {
    if (!armed) return;
    SFTGO_CHECK(!ready[i], ErrorKind::kInternal, "gradient reducer: parameter ", i,
                " received a second gradient in one backward pass");
    put(i);
    ready[i] = 1;
    --pending[bucket_of[i]];
    launch_ready();
  }
};

namespace {
struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReducer::Impl* impl;
  size_t index;
  ReadyHook(GradReducer::Impl* i, size_t k) : impl(i), index(k) {}
  void operator()(const torch::autograd::Variable&) override { impl->on_grad(index); }
};
}  // namespace

GradReducer::GradReducer(std::shared_ptr<Comm> comm, std::vector<at::Tensor> params, double bucket_mb)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.comm = std::move(comm);
  s.params = std::move(params);
  std::vector<int64_t> numels, sizes;
  std::vector<std::string> keys;
  for (const auto& p : s.params) {
    SFTGO_CHECK(p.requires_grad() && p.is_leaf(), ErrorKind::kInternal, "gradient reducer: parameters must be leaves");
    numels.push_back(p.numel());
    sizes.push_back(static_cast<int64_t>(p.element_size()));
    keys.push_back(std::string(c10::toString(p.scalar_type())) + "@" + p.device().str());
  }
  s.plan = plan_buckets(numels, sizes, keys, std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0)));
  s.bucket_of.resize(s.params.size());
  s.offset.resize(s.params.size());
  s.ready.assign(s.params.size(), 0);
  for (size_t b = 0; b < s.plan.size(); ++b) {
    const auto& first = s.params[s.plan[b].params.front()];
    s.flat.push_back(at::zeros({s.plan[b].numel}, first.options().requires_grad(false)));
    int64_t off = 0;
    for (size_t i : s.plan[b].params) {
      s.bucket_of[i] = b;
      s.offset[i] = off;
      off += s.params[i].numel();
    }
  }
  s.works.resize(s.plan.size());
  s.pending.resize(s.plan.size());
  for (size_t b = 0; b < s.plan.size(); ++b) s.pending[b] = static_cast<int64_t>(s.plan[b].params.size());
  if (s.comm->distributed())
    for (size_t i = 0; i < s.params.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(s.params[i], std::make_unique<ReadyHook>(&s, i));
}

GradReducer::~GradReducer() {
  if (impl_->comm->distributed())
    for (auto& p : impl_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

size_t GradReducer::num_buckets() const { return impl_->plan.size(); }

void GradReducer::arm() { impl_->armed = impl_->comm->distributed(); }

void GradReducer::finish() {
  Impl& s = *impl_;
  if (!s.comm->distributed()) return;
  torch::NoGradGuard no_grad;
  // Buckets that did not fill (no backward ran, or a parameter got no gradient) go out now, in order.
  for (size_t b = s.next_launch; b < s.plan.size(); ++b)
    for (size_t i : s.plan[b].params)
      if (!s.ready[i]) {
        s.put(i);
        s.ready[i] = 1;
        --s.pending[b];
      }
  s.launch_ready();
  for (size_t b = 0; b < s.plan.size(); ++b) {
    s.works[b].wait();
    s.works[b] = Work();
    for (size_t i : s.plan[b].params) {
      at::Tensor sum = s.slot(i).view(s.params[i].sizes());
      if (s.params[i].grad().defined()) s.params[i].mutable_grad().copy_(sum);
      else s.params[i].mutable_grad() = sum.clone();
    }
  }
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (size_t b = 0; b < s.plan.size(); ++b) s.pending[b] = static_cast<int64_t>(s.plan[b].params.size());
  s.next_launch = 0;
  s.armed = false;
}

}  // namespace sftgo::dist
