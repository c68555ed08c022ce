// ZeRO-3: the working weights are sharded too. A ZeroOptimizer (built with sharded_grads, gathering on
// demand) owns each rank's fp32 master shard; ShardedParams makes a group of parameters (a "unit": one
// decoder layer, or everything outside the layers) exist in full only while it is used, and otherwise
// leaves the parameters without memory (their tensors keep their shapes; only the storage is freed).
//
// A unit is one or more contiguous ranges of the flat parameter vector. Gathering a range allocates one
// buffer of the working dtype for it, and each rank owning part of it (ranks own contiguous slices of
// the flat vector, so a range splits unevenly over them) casts its master values into its part and
// broadcasts it: one broadcast per owning rank, the mirror of ZeRO-2's one reduce per owning rank. The
// parameters' storages then point into that buffer (no copy); releasing the unit drops the buffer.
// A gather can be started ahead (prefetch) and runs on the process group's thread while this one
// computes. Every rank must acquire the same units in the same order (the collectives must match).
//
// Values: a gathered weight is master.to(working dtype), exactly what stages 1 and 2 copy into the
// parameters after an update, so the three stages compute the same forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "sftgo/dist/buffer_pool.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/zero.h"

namespace sftgo::dist {

class ShardedParams {
 public:
  // zero: the optimizer over `params` (the same list and order); it must outlive this. unit_of[i]: the
  // unit (0 .. num_units - 1) of params[i]. The parameters keep the memory they have until the first
  // release_all(): code that runs before training on one rank only (a grouping cache) can still read them.
  // Parameters built without memory (model::ModelOptions::defer_storage) are gathered from the start.
  ShardedParams(std::shared_ptr<Comm> comm, const ZeroOptimizer& zero, std::vector<at::Tensor> params,
                const std::vector<int>& unit_of);
  ~ShardedParams();
  ShardedParams(const ShardedParams&) = delete;
  ShardedParams& operator=(const ShardedParams&) = delete;

  int num_units() const { return static_cast<int>(units_.size()); }
  // Makes `unit` resident (waits for its prefetch, or gathers it now), then starts gathering `prefetch`
  // (-1: none) so that it is ready when acquired next. A resident unit is left as it is.
  void acquire(int unit, int prefetch = -1);
  // Frees the unit's memory (waits first if a gather of it is in flight). Its parameters must not be
  // read until it is acquired again.
  void release(int unit);
  // Every unit released (also the parameters' original memory, the first time): call after each update,
  // since a resident unit then holds stale values.
  void release_all();
  bool resident(int unit) const;
  int64_t gathers() const { return gathers_; }  // units gathered so far (tests, logs)
  // Bytes of the working dtype resident now and the most ever resident at once (parameters only).
  int64_t resident_bytes() const { return resident_bytes_; }
  int64_t peak_resident_bytes() const { return peak_bytes_; }

 private:
  struct Run {  // params [first, last) of one unit, contiguous in the flat vector: [lo, hi)
    size_t first = 0, last = 0;
    int64_t lo = 0, hi = 0;
  };
  struct Unit {
    std::vector<Run> runs;
    std::vector<at::Tensor> buffers;  // one per run while gathered
    std::vector<Work> works;          // broadcasts in flight
    int64_t bytes = 0;
    enum class State { kReleased, kInFlight, kResident } state = State::kReleased;
  };

  void start(int unit);   // allocate buffers, fill this rank's parts, launch broadcasts
  void finish(int unit);  // wait, then point the parameters' storages into the buffers

  std::shared_ptr<Comm> comm_;
  const ZeroOptimizer* zero_;
  std::vector<at::Tensor> params_;
  std::vector<Unit> units_;
  bool original_ = true;  // the parameters still hold the memory they were built with (false: built without)
  int64_t gathers_ = 0, resident_bytes_ = 0, peak_bytes_ = 0;
  BufferPool pool_;  // released units' buffers, taken by the next gathers
};

}  // namespace sftgo::dist
