// The trainer's (and evaluation's) one data path: an endless, resumable stream of collated micro-batches
// for one data-parallel rank. Glues DistributedSampler, micro-batch grouping and collation together.
//
// One meaning of the batch sizes everywhere: a micro-batch is micro_batch_size EXAMPLES. Padded, they
// are one row each; packed (data.packing), the same examples are packed next-fit into rows of at most
// max_seq_len tokens, so a packed micro-batch has at most micro_batch_size rows. A step is
// global_batch_size / world examples per rank, split into micro-batches in sampler order.
#pragma once

#include <cstdint>

#include "sftgo/data/collate.h"
#include "sftgo/data/dataset.h"
#include "sftgo/data/sampler.h"

namespace sftgo::data {

struct LoaderOptions {
  int64_t micro_batch_size = 8;    // examples per micro-batch
  int64_t micro_batch_tokens = 0;  // > 0 (padded only): token budget, rows * longest <= budget
  bool packing = false;            // the micro-batch's examples packed into rows of <= max_seq_len
  int64_t max_seq_len = 2048;
  int32_t pad_id = 0;
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;
  int world_size = 1;
  TailPolicy tail = TailPolicy::kPad;
  int64_t pad_to_multiple = 1;  // sequence length rounded up (kGpuPadMultiple on GPUs: shapes repeat)
};
// From the data options (seed, packing, batch sizes, max_seq_len) plus what only the trainer knows.
LoaderOptions loader_options(const DataOptions& opts, int32_t pad_id, int rank = 0, int world_size = 1);

class DataLoader {
 public:
  // Keeps a reference to `ds`, which must outlive the loader.
  DataLoader(const PreparedDataset& ds, LoaderOptions opts);

  // The next micro-batch of this rank; epochs roll over silently (see state().epoch). A batch never
  // spans two epochs. Padded with a token budget: rows * longest <= micro_batch_tokens (an over-long
  // example alone).
  Batch next();
  // The next `examples` examples of this rank (fewer at the end of an epoch, never spanning two), as
  // consecutive micro-batches of micro_batch_size examples: one optimizer step's data.
  std::vector<Batch> next_step(int64_t examples);
  // Resume exactly: the state after a batch, restored into a loader over the same dataset and options,
  // yields the same following batches.
  const SamplerState& state() const { return sampler_.state(); }
  void set_state(const SamplerState& s) { sampler_.set_state(s); }
  int64_t examples_per_epoch() const { return sampler_.per_rank(); }

 private:
  Batch collate(const std::vector<int64_t>& indices) const;

  const PreparedDataset& ds_;
  LoaderOptions opts_;
  DistributedSampler sampler_;
};

}  // namespace sftgo::data
