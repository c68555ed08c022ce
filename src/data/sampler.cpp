// Shuffling, rank sharding, resumable state and micro-batch grouping.
#include "sftgo/data/sampler.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "sftgo/core/error.h"

namespace sftgo::data {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

std::string SamplerState::to_json() const { return nlohmann::json{{"epoch", epoch}, {"index", index}}.dump(); }

SamplerState SamplerState::from_json(const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    SamplerState s{j.at("epoch").get<int64_t>(), j.at("index").get<int64_t>()};
    SFTGO_CHECK(s.epoch >= 0 && s.index >= 0, ErrorKind::kFormat, "sampler state has negative fields: ", text);
    return s;
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, "bad sampler state '", text, "': ", e.what());
  }
}

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  uint64_t state = seed ^ (0xd1b54a32d192ed03ULL * static_cast<uint64_t>(epoch + 1));
  splitmix64(state);
  for (int64_t i = n - 1; i > 0; --i) {
    // Multiply-shift maps a 64-bit draw onto [0, i]; the bias (< 2^-40 here) does not matter.
    auto j =
        static_cast<int64_t>((static_cast<unsigned __int128>(splitmix64(state)) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

DistributedSampler::DistributedSampler(int64_t num_examples, uint64_t seed, int rank, int world_size, bool shuffle,
                                       TailPolicy tail)
    : n_(num_examples), seed_(seed), rank_(rank), world_(world_size), shuffle_(shuffle), tail_(tail) {
  SFTGO_CHECK(num_examples >= 0, ErrorKind::kInternal, "negative dataset size");
  SFTGO_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, ErrorKind::kDist, "bad rank ", rank,
              " for world size ", world_size);
  switch (tail) {
    case TailPolicy::kPad: per_rank_ = (n_ + world_ - 1) / world_; break;
    case TailPolicy::kDrop: per_rank_ = n_ / world_; break;
    case TailPolicy::kUneven: per_rank_ = n_ / world_ + (rank_ < n_ % world_ ? 1 : 0); break;
  }
}

std::vector<int64_t> DistributedSampler::epoch_order(int64_t epoch) const {
  std::vector<int64_t> perm;
  if (shuffle_) {
    perm = shuffled_indices(n_, seed_, epoch);
  } else {
    perm.resize(static_cast<size_t>(n_));
    std::iota(perm.begin(), perm.end(), 0);
  }
  // kPad: repeat the permutation's head (cyclically, for datasets smaller than the world).
  if (tail_ == TailPolicy::kPad)
    for (int64_t i = n_; i < per_rank_ * world_; ++i) perm.push_back(perm[static_cast<size_t>(i % n_)]);
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k) mine.push_back(perm[static_cast<size_t>(rank_ + k * world_)]);
  return mine;
}

std::vector<int64_t> DistributedSampler::next(int64_t n) {
  if (per_rank_ == 0 || n <= 0) return {};
  if (state_.index >= per_rank_) {
    ++state_.epoch;
    state_.index = 0;
  }
  if (cached_epoch_ != state_.epoch) {
    cached_order_ = epoch_order(state_.epoch);
    cached_epoch_ = state_.epoch;
  }
  const int64_t take = std::min(n, per_rank_ - state_.index);
  std::vector<int64_t> out(cached_order_.begin() + state_.index, cached_order_.begin() + state_.index + take);
  state_.index += take;
  return out;
}

void DistributedSampler::set_state(const SamplerState& s) {
  SFTGO_CHECK_HINT(s.epoch >= 0 && s.index >= 0 && s.index <= per_rank_, ErrorKind::kData,
                   "the checkpoint was made with another dataset or world size", "sampler state ", s.to_json(),
                   " does not fit ", per_rank_, " examples per rank");
  state_ = s;
}

std::vector<std::vector<int64_t>> make_micro_batches(const std::vector<int64_t>& order,
                                                     const std::vector<int64_t>& lengths, int64_t batch_size,
                                                     int64_t max_tokens, bool packed) {
  std::vector<std::vector<int64_t>> batches;
  if (max_tokens <= 0) {
    SFTGO_CHECK(batch_size > 0, ErrorKind::kConfig, "micro batch size must be positive, got ", batch_size);
    for (size_t i = 0; i < order.size(); i += static_cast<size_t>(batch_size)) {
      batches.emplace_back(order.begin() + i, order.begin() + std::min(order.size(), i + batch_size));
    }
    return batches;
  }
  std::vector<int64_t> cur;
  int64_t sum = 0, longest = 0;
  for (int64_t idx : order) {
    SFTGO_CHECK(idx >= 0 && idx < static_cast<int64_t>(lengths.size()), ErrorKind::kInternal, "index ", idx,
                " outside ", lengths.size(), " lengths");
    const int64_t len = lengths[static_cast<size_t>(idx)];
    const int64_t new_longest = std::max(longest, len);
    const int64_t cost = packed ? sum + len : new_longest * static_cast<int64_t>(cur.size() + 1);
    if (!cur.empty() && cost > max_tokens) {
      batches.push_back(std::move(cur));
      cur.clear();
      sum = 0;
      longest = 0;
    }
    cur.push_back(idx);
    sum += len;
    longest = std::max(longest, len);
  }
  if (!cur.empty()) batches.push_back(std::move(cur));
  return batches;
}

}  // namespace sftgo::data
