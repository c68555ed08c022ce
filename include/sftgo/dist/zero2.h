// ZeRO-2: the gradients of a ZeroOptimizer (built with sharded_grads) reach its fp32 gradient shard
// bucket by bucket while each backward runs, so no rank ever holds a full-size gradient buffer.
// Buckets follow dist.bucket_mb in reverse parameter order (the order backward produces gradients).
// When the last gradient of a bucket has arrived, the bucket (an fp32 copy of those gradients; each
// parameter's .grad is freed at once) is summed over ranks while backward goes on through earlier
// layers. A bucket is a contiguous range of the flat vector, so it splits unevenly over the ranks'
// shards: over NCCL with one reduce per rank owning part of it, over Gloo with all-to-alls of pieces
// (each rank sends every owner its slice and sums the copies it receives, in rank order). A bucket's
// sum is added into the owner's shard when the bucket is next needed (the next micro-batch's first
// gradient in it) or in finish(). Buckets and receive buffers are kept for reuse (dist::BufferPool).
// Every micro-batch is reduced (the full-size buffer is never held), so with several micro-batches
// the sums run over ranks first, then micro-batches: ZeRO-1 sums micro-batches first. The two agree
// up to fp32 rounding (docs/architecture.md, ZeRO-2).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "sftgo/dist/dist.h"
#include "sftgo/dist/zero.h"

namespace sftgo::dist {

class ShardReducer {
 public:
  // zero: built with sharded_grads over `params` (the same list, the same order); it must outlive this.
  ShardReducer(std::shared_ptr<Comm> comm, ZeroOptimizer& zero, const std::vector<at::Tensor>& params,
               double bucket_mb);
  ~ShardReducer();
  ShardReducer(const ShardReducer&) = delete;
  ShardReducer& operator=(const ShardReducer&) = delete;

  // After the step's backward passes (also an aborted step's): buckets a backward left incomplete go
  // out, every reduce is awaited and its sum added into the gradient shard. Every rank issues the same
  // collectives in the same order.
  void finish();
  // A backward this rank does not run (its step was aborted): every bucket goes out as zeros, the
  // collectives the other ranks issue in that backward, so they are matched and nobody waits.
  void skip_backward();
  size_t num_buckets() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sftgo::dist
