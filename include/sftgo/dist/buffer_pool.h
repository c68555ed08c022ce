// Buffers a collective schedule frees and takes again at every micro-batch (ZeRO-2's buckets and
// receive buffers, ZeRO-3's gathered layers), kept for reuse instead of freed. On the host a fresh
// buffer of hundreds of MB is mapped by the kernel page by page when first written: measured ~1 s of
// system time per rank and step for ZeRO-2 at 155M parameters and 2 micro-batches (docs/benchmarks.md),
// which the compute waits for. The CUDA caching allocator already reuses device memory (for activations
// too), so the users keep host buffers only (cap 0 on a GPU: every buffer given back is freed). Buffers
// in use plus kept stay within a cap (the planner's bound for them): a buffer given back beyond it is freed.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sftgo::dist {

class BufferPool {
 public:
  void set_cap(int64_t bytes) { cap_ = bytes; }
  int64_t kept_bytes() const { return kept_bytes_; }

  // A 1-D buffer of at least n values of `options`' dtype and device (the smallest kept one that fits,
  // else a new one); use its front n values and give the whole buffer back.
  at::Tensor take(int64_t n, const at::TensorOptions& options) {
    if (n == 0) return at::empty({0}, options);  // a receive this rank owns nothing of: no kept buffer for it
    auto best = kept_.end();
    for (auto it = kept_.begin(); it != kept_.end(); ++it)
      if (it->numel() >= n && it->dtype() == options.dtype() && it->device() == options.device() &&
          (best == kept_.end() || it->numel() < best->numel()))
        best = it;
    at::Tensor t;
    if (best != kept_.end()) {
      t = std::move(*best);
      kept_.erase(best);
      kept_bytes_ -= bytes(t);
    } else {
      const int64_t need = n * static_cast<int64_t>(options.dtype().itemsize());
      while (!kept_.empty() && used_ + kept_bytes_ + need > cap_) drop_smallest();
      t = at::empty({n}, options);
    }
    used_ += bytes(t);
    return t;
  }

  void give(at::Tensor t) {
    if (!t.defined() || t.numel() == 0) return;
    used_ -= bytes(t);
    if (used_ + kept_bytes_ + bytes(t) > cap_) return;  // freed
    kept_bytes_ += bytes(t);
    kept_.push_back(std::move(t));
  }

 private:
  static int64_t bytes(const at::Tensor& t) { return static_cast<int64_t>(t.nbytes()); }
  void drop_smallest() {
    auto it = std::min_element(kept_.begin(), kept_.end(),
                               [](const at::Tensor& a, const at::Tensor& b) { return a.numel() < b.numel(); });
    kept_bytes_ -= bytes(*it);
    kept_.erase(it);
  }

  int64_t cap_ = 0, used_ = 0, kept_bytes_ = 0;
  std::vector<at::Tensor> kept_;  // each owning its storage
};

}  // namespace sftgo::dist
