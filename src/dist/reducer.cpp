#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
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
  std::vector<at::Tensor> flat;   // per bucket [numel], the params' dtype and device: the gradients
  std::vector<size_t> bucket_of;  // param -> bucket
  std::vector<int64_t> offset;    // param -> offset in its bucket
  std::vector<char> ready;        // param's gradient is final for this step
  std::vector<int64_t> pending;   // bucket -> params still missing
  std::vector<Work> works;        // bucket -> in-flight all-reduce
  size_t next_launch = 0;         // buckets launch strictly in order on every rank
  bool armed = false;
  int64_t copied = 0;  // gradients that were not views and had to be copied in
  bool warned = false;

  // Param i's slice of its bucket, shaped like the param (contiguous: the layout AccumulateGrad
  // keeps when it adds into an existing .grad in place).
  at::Tensor view(size_t i) const {
    return flat[bucket_of[i]].narrow(0, offset[i], params[i].numel()).view(params[i].sizes());
  }

  bool is_view(size_t i) const {
    const at::Tensor& g = params[i].grad();
    if (!g.defined() || !g.is_contiguous() || g.sizes() != params[i].sizes()) return false;
    const auto* want = static_cast<const char*>(flat[bucket_of[i]].const_data_ptr()) +
                       offset[i] * static_cast<int64_t>(flat[bucket_of[i]].element_size());
    return g.const_data_ptr() == want;
  }

  // Makes param i's .grad its bucket slice again, keeping its value (zero when it had none). Only
  // needed when other code replaced or cleared .grad; costs one copy, so it is counted.
  void rebind(size_t i) {
    if (is_view(i)) return;
    at::Tensor v = view(i);
    const at::Tensor& g = params[i].grad();
    if (g.defined())
      v.copy_(g);
    else
      v.zero_();
    params[i].mutable_grad() = v;
    ++copied;
  }

  void launch_ready() {
    while (next_launch < plan.size() && pending[next_launch] == 0) {
      works[next_launch] = comm->all_reduce_async(flat[next_launch]);
      ++next_launch;
    }
  }

  // Post-accumulate-grad hook: the gradient already sits in the bucket; count it and start the
  // all-reduce of every bucket that is complete (in order).
  void on_grad(size_t i) {
    if (!armed) return;
    SFTGO_CHECK(!ready[i], ErrorKind::kInternal, "gradient reducer: parameter ", i,
                " received a second gradient in one backward pass");
    rebind(i);
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
  if (!s.comm->distributed()) return;  // one process: gradients stay where autograd puts them
  std::vector<int64_t> numels, sizes;
  std::vector<std::string> keys;
  for (size_t i = 0; i < s.params.size(); ++i) {
    const auto& p = s.params[i];
    SFTGO_CHECK(p.requires_grad() && p.is_leaf(), ErrorKind::kInternal, "gradient reducer: parameter ", i,
                " is not a leaf that requires grad");
    SFTGO_CHECK(!p.is_sparse(), ErrorKind::kInternal, "gradient reducer: parameter ", i, " is sparse");
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
  {
    // Gradients that already exist (accumulated before the reducer) move into the buckets once.
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < s.params.size(); ++i) s.rebind(i);
    s.copied = 0;
  }
  for (size_t i = 0; i < s.params.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(s.params[i], std::make_unique<ReadyHook>(&s, i));
}

GradReducer::~GradReducer() {
  if (impl_->comm->distributed())
    for (auto& p : impl_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

size_t GradReducer::num_buckets() const { return impl_->plan.size(); }

at::Tensor GradReducer::bucket(size_t b) const {
  SFTGO_CHECK(b < impl_->flat.size(), ErrorKind::kInternal, "gradient reducer: bucket ", b, " of ", impl_->flat.size());
  return impl_->flat[b];
}

int64_t GradReducer::copied_gradients() const { return impl_->copied; }

void GradReducer::arm() { impl_->armed = impl_->comm->distributed(); }

void GradReducer::zero_grad() {
  Impl& s = *impl_;
  if (!s.comm->distributed()) return;
  torch::NoGradGuard no_grad;
  for (auto& f : s.flat) f.zero_();
  // Normally a no-op: every .grad is still its bucket slice (now zero).
  for (size_t i = 0; i < s.params.size(); ++i) s.rebind(i);
}

void GradReducer::finish() {
  Impl& s = *impl_;
  if (!s.comm->distributed()) return;
  torch::NoGradGuard no_grad;
  // Buckets that did not fill (no backward ran, the step was aborted, or a parameter got no
  // gradient in the last micro-step: its slice holds what earlier micro-steps accumulated, or
  // zeros) go out now, in order, so every rank issues the same collectives.
  for (size_t b = s.next_launch; b < s.plan.size(); ++b)
    for (size_t i : s.plan[b].params)
      if (!s.ready[i]) {
        s.rebind(i);
        s.ready[i] = 1;
        --s.pending[b];
      }
  s.launch_ready();
  // The sums land in the buckets, which are the gradients: nothing to copy back.
  for (size_t b = 0; b < s.plan.size(); ++b) {
    s.works[b].wait();
    s.works[b] = Work();
  }
  if (s.copied > 0 && !s.warned) {
    s.warned = true;
    log_warn(
        "gradient reducer: {} gradients were not views of the all-reduce buckets (set to None or replaced "
        "between steps) and were copied in; zero them with GradReducer::zero_grad()",
        s.copied);
  }
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (size_t b = 0; b < s.plan.size(); ++b) s.pending[b] = static_cast<int64_t>(s.plan[b].params.size());
  s.next_launch = 0;
  s.armed = false;
}

}  // namespace sftgo::dist
