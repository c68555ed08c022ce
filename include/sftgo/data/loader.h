// The trainer's view of the data: an endless, resumable stream of collated micro-batches for one
// data-parallel rank. Glues DistributedSampler, micro-batch grouping and collation together.
#pragma once

#include <cstdint>

#include "sftgo/data/collate.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/sampler.h"

namespace sftgo::data {

struct LoaderOptions {
  int64_t micro_batch_size = 8;    // examples per batch (padded) or rows per batch (packed)
  int64_t micro_batch_tokens = 0;  // > 0 (padded only): token budget, rows * longest <= budget
  bool packing = false;            // rows of <= max_seq_len holding several examples each
  int64_t max_seq_len = 2048;
  int32_t pad_id = 0;
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;
  int world_size = 1;
  TailPolicy tail = TailPolicy::kPad;
};
// From the data options (seed, packing, batch sizes, max_seq_len) plus what only the trainer knows.
LoaderOptions loader_options(const DataOptions& opts, int32_t pad_id, int rank = 0, int world_size = 1);

class DataLoader {
 public:
  // Keeps a reference to `ds`, which must outlive the loader.
  DataLoader(const PreparedDataset& ds, LoaderOptions opts);

  // The next micro-batch of this rank; epochs roll over silently (see state().epoch). A batch never
  // spans two epochs. Packed: examples fill rows in order (next-fit) until micro_batch_size rows are
  // full. Padded with a token budget: rows * longest <= micro_batch_tokens (an over-long example alone).
  Batch next();
  // Resume exactly: the state after a batch, restored into a loader over the same dataset and options,
  // yields the same following batches.
  const SamplerState& state() const { return sampler_.state(); }
  void set_state(const SamplerState& s) { sampler_.set_state(s); }
  int64_t examples_per_epoch() const { return sampler_.per_rank(); }

 private:
  const PreparedDataset& ds_;
  LoaderOptions opts_;
  DistributedSampler sampler_;
};

}  // namespace sftgo::data
