// Deterministic, resumable, rank-sharded sampling and micro-batch grouping. No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sftgo::data {

// What to do when the dataset size is not a multiple of world_size.
enum class TailPolicy {
  // Default. Repeat the first (world_size - N % world_size) indices of the epoch's permutation so
  // every rank gets ceil(N / world_size): no example is lost, at most world_size - 1 are seen twice.
  kPad,
  // Drop the last N % world_size indices of the permutation; which ones changes with the epoch.
  kDrop,
  // Every index exactly once: rank r takes positions r, r+W, ... < N, so the first N % world_size ranks
  // get one more (evaluation, where every rank's sums are added and nothing may count twice).
  kUneven,
};

// Position in the stream: `index` examples of this rank's share of `epoch` have been consumed.
struct SamplerState {
  int64_t epoch = 0;
  int64_t index = 0;
  std::string to_json() const;                        // {"epoch":E,"index":I}
  static SamplerState from_json(const std::string&);  // throws sftgo::Error(kFormat) on bad JSON
  bool operator==(const SamplerState&) const = default;
};

class DistributedSampler {
 public:
  // The permutation of epoch e depends only on (seed, e); rank r takes positions r, r+W, r+2W, ...
  DistributedSampler(int64_t num_examples, uint64_t seed, int rank = 0, int world_size = 1, bool shuffle = true,
                     TailPolicy tail = TailPolicy::kPad);

  int64_t per_rank() const { return per_rank_; }          // examples per rank per epoch
  std::vector<int64_t> epoch_order(int64_t epoch) const;  // this rank's indices for a whole epoch
  // Up to n next indices; stops at the epoch end (returns fewer, then the state moves to the next
  // epoch on the following call). Empty only when the dataset is empty.
  std::vector<int64_t> next(int64_t n);
  const SamplerState& state() const { return state_; }
  void set_state(const SamplerState& s);  // exact resume; validates index <= per_rank()

 private:
  int64_t n_;
  uint64_t seed_;
  int rank_, world_;
  bool shuffle_;
  TailPolicy tail_;
  int64_t per_rank_;
  SamplerState state_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

// The global permutation of [0, n) for (seed, epoch): our own Fisher-Yates over splitmix64, so it
// is identical on every platform and standard library.
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch);

// Splits an ordered list of example indices into consecutive micro-batches, keeping the order:
// max_tokens <= 0: `batch_size` examples each (the last may be smaller);
// max_tokens > 0, padded: a batch grows while (count * longest) <= max_tokens;
// max_tokens > 0, packed: a batch grows while the sum of lengths <= max_tokens.
// An example longer than the budget gets a batch of its own.
std::vector<std::vector<int64_t>> make_micro_batches(const std::vector<int64_t>& order,
                                                     const std::vector<int64_t>& lengths, int64_t batch_size,
                                                     int64_t max_tokens = 0, bool packed = false);

}  // namespace sftgo::data
