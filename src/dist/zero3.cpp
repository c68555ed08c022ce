#include "sftgo/dist/zero3.h"

#include <c10/core/StorageImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "sftgo/core/error.h"

namespace sftgo::dist {

namespace {

c10::StorageImpl& storage_of(const at::Tensor& p) { return *p.storage().unsafeGetStorageImpl(); }

// The parameter's storage becomes a non-owning view of `bytes` bytes at `data` (the unit's buffer owns them).
void point_into(const at::Tensor& p, void* data, size_t bytes) {
  c10::StorageImpl& s = storage_of(p);
  s.set_data_ptr_noswap(at::DataPtr(data, p.device()));
  s.set_nbytes(bytes);
}

void free_storage(const at::Tensor& p) { storage_of(p).reset(); }

}  // namespace

ShardedParams::ShardedParams(std::shared_ptr<Comm> comm, const ZeroOptimizer& zero, std::vector<at::Tensor> params,
                             const std::vector<int>& unit_of)
    : comm_(std::move(comm)), zero_(&zero), params_(std::move(params)) {
  const auto& segs = zero.segments();
  SFTGO_CHECK(params_.size() == segs.size() && unit_of.size() == params_.size(), ErrorKind::kInternal, "ZeRO-3: ",
              params_.size(), " parameters and ", unit_of.size(), " unit ids, the optimizer has ", segs.size());
  int units = 0;
  for (int u : unit_of) units = std::max(units, u + 1);
  units_.resize(static_cast<size_t>(units));
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    // The storage is freed and re-pointed as a whole: it must be this parameter's alone, from its start
    // (or none yet: a model built with defer_storage).
    const size_t bytes = storage_of(p).nbytes();
    SFTGO_CHECK(p.is_contiguous() && p.storage_offset() == 0 &&
                    (bytes == static_cast<size_t>(p.numel()) * p.element_size() || bytes == 0),
                ErrorKind::kInternal, "ZeRO-3: parameter ", i, " does not own a contiguous storage of its own");
    if (bytes == 0 && p.numel() > 0) original_ = false;  // built without memory: nothing to free
    Unit& u = units_[static_cast<size_t>(unit_of[i])];
    if (u.runs.empty() || u.runs.back().last != i)  // not right after the unit's previous parameter
      u.runs.push_back({i, i, segs[i].first, segs[i].first});
    u.runs.back().last = i + 1;
    u.runs.back().hi = segs[i].first + segs[i].second;
    u.bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  // Kept for reuse: as many buffers as the planner counts resident (the outer unit and 2 layers). Host
  // memory only: on a GPU the caching allocator reuses freed blocks for activations too.
  std::vector<int64_t> sizes;
  for (const Unit& u : units_) sizes.push_back(u.bytes);
  std::sort(sizes.rbegin(), sizes.rend());
  sizes.resize(std::min<size_t>(sizes.size(), 3));
  if (params_.empty() || params_.front().device().is_cpu())
    pool_.set_cap(std::accumulate(sizes.begin(), sizes.end(), int64_t{0}));
  if (original_)
    for (const Unit& u : units_) resident_bytes_ += u.bytes;  // the parameters' original memory
  peak_bytes_ = resident_bytes_;
}

ShardedParams::~ShardedParams() {
  // Collectives still in flight write into buffers this object owns.
  for (Unit& u : units_)
    for (Work& w : u.works) w.wait();
}

bool ShardedParams::resident(int unit) const {
  return original_ || units_.at(static_cast<size_t>(unit)).state == Unit::State::kResident;
}

void ShardedParams::start(int unit) {
  Unit& u = units_.at(static_cast<size_t>(unit));
  if (u.state != Unit::State::kReleased) return;
  torch::NoGradGuard no_grad;
  const int64_t shard = zero_->shard_size(), begin = zero_->shard_begin();
  const at::Tensor& master = zero_->master_shard();  // [shard] fp32
  const at::ScalarType working = params_.front().scalar_type();
  for (const Run& run : u.runs) {
    // [hi - lo] on the parameters' device (the master shard may be in host memory: dist.offload_optimizer).
    // The pool's buffer may be longer: everything below uses its front.
    at::Tensor buf = pool_.take(run.hi - run.lo, params_.front().options().dtype(working).requires_grad(false));
    for (int r = 0; r < comm_->world_size(); ++r) {
      const int64_t a = std::max(run.lo, r * shard), e = std::min(run.hi, (r + 1) * shard);
      if (a >= e) continue;
      at::Tensor part = buf.narrow(0, a - run.lo, e - a);
      if (r == comm_->rank()) part.copy_(master.narrow(0, a - begin, e - a));  // fp32 -> working dtype
      u.works.push_back(comm_->broadcast_async(part, r));
    }
    u.buffers.push_back(std::move(buf));
  }
  u.state = Unit::State::kInFlight;
  resident_bytes_ += u.bytes;
  peak_bytes_ = std::max(peak_bytes_, resident_bytes_);
  ++gathers_;
}

void ShardedParams::finish(int unit) {
  Unit& u = units_.at(static_cast<size_t>(unit));
  if (u.state != Unit::State::kInFlight) return;
  for (Work& w : u.works) w.wait();
  u.works.clear();
  for (size_t k = 0; k < u.runs.size(); ++k) {
    const Run& run = u.runs[k];
    auto* base = static_cast<char*>(u.buffers[k].data_ptr());
    const size_t elt = u.buffers[k].element_size();
    const auto& segs = zero_->segments();
    for (size_t i = run.first; i < run.last; ++i)
      point_into(params_[i], base + (segs[i].first - run.lo) * static_cast<int64_t>(elt),
                 static_cast<size_t>(segs[i].second) * elt);
  }
  u.state = Unit::State::kResident;
}

void ShardedParams::acquire(int unit, int prefetch) {
  SFTGO_CHECK(unit >= 0 && unit < num_units(), ErrorKind::kInternal, "ZeRO-3: no unit ", unit);
  if (original_) return;  // before the first release_all the parameters hold their own memory
  start(unit);
  finish(unit);
  if (prefetch >= 0 && prefetch < num_units()) start(prefetch);
}

void ShardedParams::release(int unit) {
  if (original_) return;
  Unit& u = units_.at(static_cast<size_t>(unit));
  if (u.state == Unit::State::kReleased) return;
  finish(unit);
  for (const Run& run : u.runs)
    for (size_t i = run.first; i < run.last; ++i) free_storage(params_[i]);
  for (at::Tensor& b : u.buffers) pool_.give(std::move(b));  // the next gather takes it
  u.buffers.clear();
  u.state = Unit::State::kReleased;
  resident_bytes_ -= u.bytes;
}

void ShardedParams::release_all() {
  if (original_) {
    for (const at::Tensor& p : params_) free_storage(p);  // the memory the model was built with
    original_ = false;
    resident_bytes_ = 0;
    return;
  }
  for (int u = 0; u < num_units(); ++u) release(u);
}

}  // namespace sftgo::dist
