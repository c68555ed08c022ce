// A grouping cache computed in shares across ranks (shard.h): the split arithmetic, and ranks run as
// threads of this process that exchange part files exactly as separate processes do (the 2-process
// Gloo run through sftgo-train is tests/python/test_dist_scoring.py).
#include <gtest/gtest.h>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/grouping/shard.h"

namespace sftgo::grouping::shard_test {
namespace {

using data::kIgnoreLabel;
using data::TokenizedExample;

TokenizedExample make_example(std::vector<int32_t> ids, size_t prompt, int64_t index) {
  TokenizedExample ex;
  ex.ids = std::move(ids);
  ex.labels = ex.ids;
  for (size_t t = 0; t < prompt && t < ex.labels.size(); ++t) ex.labels[t] = kIgnoreLabel;
  ex.index = index;
  return ex;
}

// Examples of uneven lengths (3..17 tokens), 2 prompt tokens each.
std::vector<TokenizedExample> dataset(int n) {
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> ids;
    for (int t = 0; t < 3 + (i * 7) % 15; ++t) ids.push_back(1 + (i * 13 + t * 5) % 40);
    ex.push_back(make_example(ids, 2, i));
  }
  return ex;
}

// POSIX on purpose: libtorch.so exports a broken std::filesystem::remove_all (see test_select.cpp).
void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::string temp_dir(const std::string& tag) {
  const char* tmp = std::getenv("TMPDIR");
  std::string p = std::string(tmp ? tmp : "/tmp") + "/sftgo_shard_" + tag + "_" + std::to_string(::getpid());
  remove_tree(p);
  ::mkdir(p.c_str(), 0755);
  return p;
}

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

ShardJob job_of(int rank, int world, double wait_s = 60) {
  ShardJob j;
  j.rank = rank;
  j.world_size = world;
  j.wait_timeout_s = wait_s;
  j.poll_s = 0.01;
  return j;
}

std::vector<std::pair<size_t, size_t>> pairs(const std::vector<ShareRange>& s) {
  std::vector<std::pair<size_t, size_t>> out;
  for (const auto& r : s) out.emplace_back(r.begin, r.end);
  return out;
}

using P = std::vector<std::pair<size_t, size_t>>;

TEST(Shard, SplitSharesByCost) {
  const std::vector<uint64_t> even = {5, 5, 5, 5};
  EXPECT_EQ(pairs(split_shares(even, 1)), (P{{0, 4}}));
  EXPECT_EQ(pairs(split_shares(even, 2)), (P{{0, 2}, {2, 4}}));
  // 20/3 = 6.67 per share: the first boundary where the prefix reaches it (10), then 13.3 (15).
  EXPECT_EQ(pairs(split_shares(even, 3)), (P{{0, 2}, {2, 3}, {3, 4}}));
  // Uneven: one long example takes a share of its own.
  const std::vector<uint64_t> uneven = {1, 1, 10, 1, 1};
  EXPECT_EQ(pairs(split_shares(uneven, 2)), (P{{0, 3}, {3, 5}}));
  EXPECT_EQ(pairs(split_shares(uneven, 3)), (P{{0, 3}, {3, 3}, {3, 5}}));
  // World larger than the number of examples: the extra ranks get empty shares.
  const std::vector<uint64_t> two = {3, 4};
  EXPECT_EQ(pairs(split_shares(two, 4)), (P{{0, 1}, {1, 2}, {2, 2}, {2, 2}}));
  EXPECT_EQ(pairs(split_shares(std::vector<uint64_t>{}, 3)), (P{{0, 0}, {0, 0}, {0, 0}}));
  // Zero costs: split by count; trailing zero-cost examples still belong to a share.
  EXPECT_EQ(pairs(split_shares(std::vector<uint64_t>{0, 0, 0, 0}, 2)), (P{{0, 2}, {2, 4}}));
  EXPECT_EQ(pairs(split_shares(std::vector<uint64_t>{4, 0, 0}, 2)), (P{{0, 1}, {1, 3}}));
  EXPECT_THROW(split_shares(even, 0), Error);
}

// Any costs and world: the shares are contiguous, in rank order, cover every example once, and none
// exceeds total/world by more than its last example's cost.
TEST(Shard, SplitSharesPartitionProperty) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = rng() % 12;
    const int world = 1 + static_cast<int>(rng() % 9);
    std::vector<uint64_t> costs(n);
    uint64_t total = 0;
    for (auto& c : costs) total += (c = rng() % 4 == 0 ? 0 : rng() % 50);
    const auto s = split_shares(costs, world);
    ASSERT_EQ(s.size(), static_cast<size_t>(world));
    size_t next = 0;
    for (int r = 0; r < world; ++r) {
      ASSERT_EQ(s[r].begin, next) << trial;
      ASSERT_LE(s[r].begin, s[r].end) << trial;
      next = s[r].end;
      uint64_t cost = 0, last = 0;
      for (size_t i = s[r].begin; i < s[r].end; ++i) cost += (last = costs[i]);
      if (total > 0) EXPECT_LE(cost * world, total + last * world + world) << trial << " rank " << r;
    }
    ASSERT_EQ(next, n) << trial;
  }
}

// compute_groups as world ranks (threads) on one cache dir: every rank returns every example's groups,
// and the merged cache file is byte-identical to a single process's.
std::vector<GroupingOutput> run_ranks(const std::vector<TokenizedExample>& ex, const GroupingOptions& o, int world) {
  std::vector<std::future<GroupingOutput>> f;
  for (int r = 0; r < world; ++r)
    f.push_back(std::async(std::launch::async, [&, r] { return compute_groups(ex, o, nullptr, job_of(r, world)); }));
  std::vector<GroupingOutput> out;
  for (auto& x : f) out.push_back(x.get());
  return out;
}

TEST(Shard, RanksSplitTheGroupsAndMergeTheSameCacheAsOneProcess) {
  const auto dir = temp_dir("merge");
  const auto ex = dataset(23);
  for (const std::string fn : {"tfidf", "frequency", "random"}) {
    for (int world : {2, 3, 40}) {  // 40 > 23 examples: ranks with nothing to do
      GroupingOptions o;
      o.function = fn;
      o.num_threads = 1;
      o.cache_dir = dir + "/one_" + fn + std::to_string(world);
      const auto one = compute_groups(ex, o);
      ASSERT_FALSE(one.from_cache);
      o.cache_dir = dir + "/many_" + fn + std::to_string(world);
      const auto ranks = run_ranks(ex, o, world);
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(ranks[r].groups, one.groups) << fn << " rank " << r << "/" << world;
        EXPECT_EQ(ranks[r].scores, one.scores) << fn << " rank " << r << "/" << world;
      }
      const std::string name = one.cache_path.substr(one.cache_path.rfind('/'));
      ASSERT_TRUE(exists(o.cache_dir + name)) << fn;
      EXPECT_EQ(bytes_of(o.cache_dir + name), bytes_of(one.cache_path)) << fn << " world " << world;
      for (int r = 0; r < world; ++r)
        EXPECT_FALSE(exists(grouping_part_path(o.cache_dir + name, r, world))) << "rank 0 removes the parts";
      // The next job (any world size) loads the cache.
      EXPECT_TRUE(compute_groups(ex, o, nullptr, job_of(1, 2)).from_cache);
    }
  }
  remove_tree(dir);
}

// A share's rows in computing order: every token of example i scores i, group i % 2.
GroupingOutput index_rows(const std::vector<TokenizedExample>& ex, const ShardUnits& u, ShareRange s) {
  GroupingOutput o;
  for (size_t k = u.first(s.begin); k < u.first(s.end); ++k) {
    const size_t i = u.order[k];
    o.groups.emplace_back(ex[i].ids.size(), static_cast<uint8_t>(i % 2));
    o.scores.emplace_back(ex[i].ids.size(), static_cast<float>(i));
  }
  return o;
}

// compute_sharded directly, with units of several examples in another order (as Rho-1's forward
// batches): each rank computes exactly its share of whole units, once, and every rank gets the rows
// back in example order.
TEST(Shard, EachRankComputesOnlyItsShareOfWholeUnits) {
  const auto dir = temp_dir("share");
  const auto ex = dataset(10);
  ShardUnits units;
  units.order = {9, 8, 7, 0, 1, 2, 3, 6, 5, 4};
  units.ends = {3, 4, 7, 10};  // uneven units: 3, 1, 3 and 3 examples
  units.costs = {30, 10, 30, 30};
  const int world = 3;
  const auto shares = split_shares(units.costs, world);
  ASSERT_EQ(pairs(shares), (P{{0, 2}, {2, 3}, {3, 4}}));
  std::mutex mu;
  std::vector<std::vector<std::pair<size_t, size_t>>> calls(world);
  const std::string cache = dir + "/groups-test-0000000000000001.bin";
  auto rank = [&](int r) {
    return compute_sharded(
        ex, cache, 1, job_of(r, world), units,
        [&, r](const ShardUnits& u, ShareRange s) {
          {
            std::lock_guard lock(mu);
            calls[r].emplace_back(s.begin, s.end);
          }
          return index_rows(ex, u, s);
        },
        "test scores");
  };
  std::vector<std::future<GroupingOutput>> f;
  for (int r = 0; r < world; ++r) f.push_back(std::async(std::launch::async, rank, r));
  for (int r = 0; r < world; ++r) {
    const auto out = f[r].get();
    ASSERT_EQ(out.scores.size(), ex.size());
    for (size_t i = 0; i < ex.size(); ++i) {
      EXPECT_EQ(out.scores[i], std::vector<float>(ex[i].ids.size(), float(i))) << "rank " << r << " example " << i;
      EXPECT_EQ(out.groups[i], std::vector<uint8_t>(ex[i].ids.size(), uint8_t(i % 2)));
    }
    ASSERT_EQ(calls[r].size(), 1u) << r;
    EXPECT_EQ(calls[r][0], std::make_pair(shares[r].begin, shares[r].end)) << r;
  }
  remove_tree(dir);
}

// Rank 0 can merge, write the cache and remove every part while another rank still computes its own
// share (the last part it needed was that rank's, written just before). That rank must then take the
// cache, not wait for the removed parts until its limit (seen in CI with 40 ranks on 2 cores).
// Deterministic here: rank 1 of 2 alone, whose share computation writes the merged cache.
TEST(Shard, ACacheMergedWhileThisRankComputesIsTaken) {
  const auto dir = temp_dir("late");
  const auto ex = dataset(10);
  const ShardUnits units = per_example_units(ex);
  auto rows = [&](const ShardUnits& u, ShareRange s) { return index_rows(ex, u, s); };
  const std::string cache = dir + "/groups-test-0000000000000002.bin";
  const auto whole = compute_sharded(ex, cache, 2, job_of(0, 1), units, rows, "test scores");  // writes it
  const std::string merged = bytes_of(cache);
  std::remove(cache.c_str());
  const auto late = compute_sharded(
      ex, cache, 2, job_of(1, 2, /*wait_s=*/1), units,
      [&](const ShardUnits& u, ShareRange s) {
        std::ofstream(cache, std::ios::binary) << merged;  // rank 0 merged meanwhile; no part of its is left
        return rows(u, s);
      },
      "test scores");
  EXPECT_EQ(late.groups, whole.groups);
  EXPECT_EQ(late.scores, whole.scores);
  remove_tree(dir);
}

// A part a crashed run of the same computation left is reused; one of another world size, split or
// computation (another key) is never mixed in.
TEST(Shard, StalePartsAreKeyed) {
  const auto dir = temp_dir("stale");
  const auto ex = dataset(12);
  GroupingOptions o;
  o.function = "tfidf";
  o.num_threads = 1;
  o.cache_dir = dir + "/one";
  const auto one = compute_groups(ex, o);
  const std::string name = one.cache_path.substr(one.cache_path.rfind('/'));
  const std::string cache = dir + "/many" + name;
  const uint64_t key = std::stoull(name.substr(name.rfind('-') + 1, 16), nullptr, 16);
  std::vector<uint64_t> costs;
  for (const auto& e : ex) costs.push_back(e.ids.size());
  const auto shares = split_shares(costs, 2);
  ::mkdir((dir + "/many").c_str(), 0755);
  // Rank 1's file holds rubbish of the right layout under another key (another dataset, world or split).
  GroupingOutput bogus;
  for (size_t i = shares[1].begin; i < shares[1].end; ++i) {
    bogus.groups.emplace_back(ex[i].ids.size(), 1);
    bogus.scores.emplace_back(ex[i].ids.size(), 42.0f);
  }
  save_grouping_cache(grouping_part_path(cache, 1, 2), key ^ 1, bogus);
  // Rank 0's file is a valid part of this very computation (as a crashed run leaves it).
  GroupingOutput valid;
  for (size_t i = shares[0].begin; i < shares[0].end; ++i) {
    valid.groups.push_back(one.groups[i]);
    valid.scores.push_back(one.scores[i]);
  }
  save_grouping_cache(grouping_part_path(cache, 0, 2), grouping_part_key(key, 0, 2, per_example_units(ex), shares[0]),
                      valid);
  o.cache_dir = dir + "/many";
  const auto ranks = run_ranks(ex, o, 2);
  EXPECT_EQ(ranks[0].scores, one.scores);
  EXPECT_EQ(ranks[1].scores, one.scores);
  EXPECT_EQ(bytes_of(cache), bytes_of(one.cache_path));
  remove_tree(dir);
}

// A rank whose peers never deliver stops after the wait limit with an error naming them, instead of
// hanging; a part that cannot be written stops its rank with an error naming the file.
TEST(Shard, MissingPeerAndUnwritableDirAreErrors) {
  const auto dir = temp_dir("errors");
  const auto ex = dataset(8);
  GroupingOptions o;
  o.function = "tfidf";
  o.cache_dir = dir + "/c";
  try {
    compute_groups(ex, o, nullptr, job_of(0, 3, /*wait_s=*/0.3));
    ADD_FAILURE() << "rank 0 returned without its peers' parts";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDist);
    EXPECT_NE(std::string(e.what()).find("parts of rank(s) 1, 2 did not appear in " + o.cache_dir), std::string::npos)
        << e.what();
  }
  std::ofstream(dir + "/file") << "x";
  o.cache_dir = dir + "/file/sub";  // its parent is a file: nothing can be written there
  try {
    compute_groups(ex, o, nullptr, job_of(1, 2, 0.3));
    ADD_FAILURE() << "an unwritable part went unnoticed";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("rank 1: cannot write its tfidf groups part " + o.cache_dir), std::string::npos)
        << e.what();
  }
  // No cache dir: every rank computes all by itself.
  o.cache_dir.clear();
  const auto alone = compute_groups(ex, o, nullptr, job_of(1, 2, 0.3));
  EXPECT_EQ(alone.groups.size(), ex.size());
  remove_tree(dir);
}

}  // namespace
}  // namespace sftgo::grouping::shard_test
