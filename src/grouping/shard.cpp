// A grouping cache computed in shares across ranks and merged through part files (shard.h).
#include "sftgo/grouping/shard.h"

#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/log.h"
#include "sftgo/grouping/cache.h"

namespace sftgo::grouping {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// CPU seconds of this process so far: next to the wall time, it shows whether a share had its cores.
double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Token counts of the examples of units [share.begin, share.end), in computing order.
std::vector<size_t> share_lengths(const std::vector<data::TokenizedExample>& examples, const ShardUnits& units,
                                  ShareRange share) {
  std::vector<size_t> out;
  for (size_t k = units.first(share.begin); k < units.first(share.end); ++k)
    out.push_back(examples[units.order[k]].ids.size());
  return out;
}

// The rows compute() returned must match its share: one row per example, one value per token.
void check_rows(const GroupingOutput& out, std::span<const size_t> lengths, const std::string& what) {
  SFTGO_CHECK(out.groups.size() == lengths.size() && out.scores.size() == lengths.size(), ErrorKind::kInternal, what,
              ": ", out.groups.size(), " masks and ", out.scores.size(), " score rows for ", lengths.size(),
              " examples");
  for (size_t i = 0; i < lengths.size(); ++i)
    SFTGO_CHECK(out.groups[i].size() == lengths[i] && out.scores[i].size() == lengths[i], ErrorKind::kInternal, what,
                ": row ", i, " of a share has ", lengths[i], " tokens but ", out.groups[i].size(),
                " mask entries and ", out.scores[i].size(), " scores");
}

// Rows in computing order (units.order) -> rows in example order.
GroupingOutput to_example_order(GroupingOutput rows, const ShardUnits& units) {
  GroupingOutput out;
  out.groups.resize(rows.groups.size());
  out.scores.resize(rows.scores.size());
  for (size_t k = 0; k < units.order.size(); ++k) {
    out.groups[units.order[k]] = std::move(rows.groups[k]);
    out.scores[units.order[k]] = std::move(rows.scores[k]);
  }
  return out;
}

// A file's identity (inode, size, modification time): a load is retried only when it changed, so a
// rejected stale file warns once, and a rewrite (atomic rename: a new inode) is noticed.
class FileWatch {
 public:
  explicit FileWatch(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }
  bool changed() {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) return false;
    const Sig sig{static_cast<uint64_t>(st.st_ino), static_cast<int64_t>(st.st_size),
                  static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
    if (seen_ && sig == last_) return false;
    seen_ = true;
    last_ = sig;
    return true;
  }

 private:
  struct Sig {
    uint64_t ino = 0;
    int64_t size = 0, mtime_ns = 0;
    bool operator==(const Sig&) const = default;
  };
  std::string path_;
  bool seen_ = false;
  Sig last_;
};

void remove_file(const std::string& path) { std::remove(path.c_str()); }  // missing is fine

// This rank's part: a valid one a crashed run of the same computation left, else computed and written.
GroupingOutput own_part(const std::vector<data::TokenizedExample>& examples, const ShardUnits& units,
                        const std::string& part, uint64_t pkey, ShareRange mine, const ShardJob& job,
                        const ShareCompute& compute, const std::string& what) {
  const std::vector<size_t> lengths = share_lengths(examples, units, mine);
  const size_t first = units.first(mine.begin), last = units.first(mine.end);
  if (auto reused = load_grouping_rows(part, pkey, lengths)) {
    log_info("grouping: rank {}/{} reuses its {} part {} ({} examples)", job.rank, job.world_size, what, part,
             lengths.size());
    return std::move(*reused);
  }
  log_info("grouping: rank {}/{} computes the {} of examples [{}, {}) of {}{}", job.rank, job.world_size, what, first,
           last, examples.size(), std::is_sorted(units.order.begin(), units.order.end()) ? "" : " (in batch order)");
  GroupingOutput out = mine.empty() ? GroupingOutput{} : compute(units, mine);
  check_rows(out, lengths, what);
  try {
    std::filesystem::create_directories(std::filesystem::path(part).parent_path());
    save_grouping_cache(part, pkey, out);
  } catch (const std::exception& e) {
    SFTGO_FAIL_HINT(ErrorKind::kIo,
                    "the ranks exchange their shares through data.cache_dir: it must be one writable directory that "
                    "every rank sees (a shared filesystem across nodes), or empty (every rank then computes all)",
                    "rank ", job.rank, ": cannot write its ", what, " part ", part, ": ", e.what());
  }
  return out;
}

struct Merged {
  GroupingOutput out;
  bool via_cache = false;  // rank 0 had already merged and written the cache
};

// Polls until every rank's part loads, or the merged cache does, within the wait limit.
Merged wait_for_parts(const std::vector<data::TokenizedExample>& examples, const std::string& cache_path, uint64_t key,
                      const ShardUnits& units, const std::vector<ShareRange>& shares,
                      std::vector<std::optional<GroupingOutput>>& parts, const ShardJob& job, double own_seconds,
                      const std::string& what, FileWatch& cache_watch) {
  const int world = job.world_size;
  const double limit = job.wait_timeout_s + 2 * own_seconds;
  std::vector<FileWatch> watches;
  for (int r = 0; r < world; ++r) watches.emplace_back(grouping_part_path(cache_path, r, world));
  const auto start = Clock::now();
  double next_log = job.progress_log_s;
  for (;;) {
    if (cache_watch.changed())
      if (auto cached = load_grouping_cache(cache_path, key, examples)) return {std::move(*cached), true};
    std::string missing;
    for (int r = 0; r < world; ++r) {
      if (parts[r]) continue;
      const ShareRange s = shares[r];
      if (watches[r].changed())
        parts[r] = load_grouping_rows(watches[r].path(), grouping_part_key(key, r, world, units, s),
                                      share_lengths(examples, units, s));
      if (!parts[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    if (missing.empty()) break;
    const double waited = since(start);
    SFTGO_CHECK_HINT(waited <= limit, ErrorKind::kDist,
                     "data.cache_dir must be one directory every rank sees (a shared filesystem across nodes); a "
                     "rank that needs longer for its share needs a larger dist.timeout_s",
                     "rank ", job.rank, ": the ", what, " parts of rank(s) ", missing, " did not appear in ",
                     std::filesystem::path(cache_path).parent_path().string(), " within ",
                     sftgo::format("{:.0f}", limit), " s (the wait limit plus twice this rank's own share time)");
    if (waited >= next_log) {
      log_info("grouping: rank {}/{} waits for the {} parts of rank(s) {} ({:.0f} s of at most {:.0f} s)", job.rank,
               world, what, missing, waited, limit);
      next_log += job.progress_log_s;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(job.poll_s));
  }
  GroupingOutput rows;  // in computing order: the parts are consecutive runs of it
  for (auto& p : parts) {
    for (auto& g : p->groups) rows.groups.push_back(std::move(g));
    for (auto& s : p->scores) rows.scores.push_back(std::move(s));
  }
  return {to_example_order(std::move(rows), units), false};
}

}  // namespace

std::vector<ShareRange> split_shares(std::span<const uint64_t> costs, int world) {
  SFTGO_CHECK(world >= 1, ErrorKind::kInternal, "split_shares: world size ", world);
  const size_t n = costs.size();
  unsigned __int128 total = 0;
  for (uint64_t c : costs) total += c;
  const bool by_count = total == 0;  // all zero: split by count instead
  auto cost = [&](size_t i) -> unsigned __int128 { return by_count ? 1 : costs[i]; };
  if (by_count) total = n;
  std::vector<ShareRange> out(static_cast<size_t>(world));
  size_t i = 0;
  unsigned __int128 prefix = 0;
  for (int r = 0; r < world; ++r) {
    out[r].begin = i;
    const unsigned __int128 target = static_cast<unsigned __int128>(r + 1) * total;  // prefix * world >= target
    while (i < n && prefix * static_cast<unsigned>(world) < target) prefix += cost(i++);
    if (r == world - 1) i = n;  // trailing zero-cost examples belong to the last share
    out[r].end = i;
  }
  return out;
}

std::string grouping_part_path(const std::string& cache_path, int rank, int world) {
  return sftgo::format("{}.part-{}-of-{}", cache_path, rank, world);
}

uint64_t grouping_part_key(uint64_t cache_key, int rank, int world, const ShardUnits& units, ShareRange share) {
  const uint64_t fields[] = {cache_key, static_cast<uint64_t>(rank), static_cast<uint64_t>(world), share.begin,
                             share.end};
  uint64_t h = hash64(fields, sizeof(fields), 0x7061727473ULL);  // "parts"
  h = hash64(units.order.data(), units.order.size() * sizeof(size_t), h);
  return hash64(units.ends.data(), units.ends.size() * sizeof(size_t), h);
}

ShardUnits per_example_units(const std::vector<data::TokenizedExample>& examples) {
  ShardUnits u;
  for (size_t i = 0; i < examples.size(); ++i) {
    u.order.push_back(i);
    u.ends.push_back(i + 1);
    u.costs.push_back(examples[i].ids.size());
  }
  return u;
}

GroupingOutput compute_sharded(const std::vector<data::TokenizedExample>& examples, const std::string& cache_path,
                               uint64_t key, const ShardJob& job, const ShardUnits& units, const ShareCompute& compute,
                               const std::string& what) {
  const auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  SFTGO_CHECK(job.world_size >= 1 && job.rank >= 0 && job.rank < job.world_size, ErrorKind::kInternal,
              "compute_sharded: rank ", job.rank, " of ", job.world_size);
  SFTGO_CHECK(units.order.size() == examples.size() && units.costs.size() == units.size() &&
                  (units.ends.empty() ? examples.empty() : units.ends.back() == examples.size()),
              ErrorKind::kInternal, "compute_sharded: the units do not cover the ", examples.size(), " examples");
  // The cache as the load below sees it: the wait retries it once it changes. Rank 0 may merge, write it
  // and remove every part while this rank computes its own share, so the state must be the one seen
  // here, before that share, not when the wait starts.
  FileWatch cache_watch(cache_path);
  if (!cache_path.empty()) cache_watch.changed();
  if (!cache_path.empty())
    if (auto cached = load_grouping_cache(cache_path, key, examples)) {
      cached->from_cache = true;
      cached->cache_path = cache_path;
      return std::move(*cached);
    }
  GroupingOutput out;
  if (cache_path.empty() || job.world_size == 1) {
    const ShareRange all{0, units.size()};
    out = units.size() == 0 ? GroupingOutput{} : compute(units, all);
    check_rows(out, share_lengths(examples, units, all), what);
    out = to_example_order(std::move(out), units);
    log_info("grouping: {} of {} examples computed in {:.2f} s ({:.2f} s CPU)", what, examples.size(), since(start),
             cpu_seconds() - cpu_start);
  } else {
    const auto shares = split_shares(units.costs, job.world_size);
    const ShareRange mine = shares[job.rank];
    const std::string part = grouping_part_path(cache_path, job.rank, job.world_size);
    std::vector<std::optional<GroupingOutput>> parts(job.world_size);
    parts[job.rank] = own_part(examples, units, part, grouping_part_key(key, job.rank, job.world_size, units, mine),
                               mine, job, compute, what);
    const double own_seconds = since(start);
    log_info("grouping: rank {}/{} did its {} share in {:.2f} s ({:.2f} s CPU); merging the ranks' parts from {}",
             job.rank, job.world_size, what, own_seconds, cpu_seconds() - cpu_start,
             std::filesystem::path(cache_path).parent_path().string());
    Merged m = wait_for_parts(examples, cache_path, key, units, shares, parts, job, own_seconds, what, cache_watch);
    out = std::move(m.out);
    out.cache_path = cache_path;
    if (m.via_cache) remove_file(part);  // the cache exists: a part recomputed after rank 0 merged is of no use
    if (m.via_cache || job.rank != 0) return out;
  }
  if (!cache_path.empty()) {
    try {
      std::filesystem::create_directories(std::filesystem::path(cache_path).parent_path());
      save_grouping_cache(cache_path, key, out);
      out.cache_path = cache_path;
      if (job.world_size > 1)
        for (int r = 0; r < job.world_size; ++r) remove_file(grouping_part_path(cache_path, r, job.world_size));
    } catch (const std::exception& e) {
      // A read-only or full cache dir must not stop training; the groups are in memory.
      log_warn("grouping: could not write cache {}: {}", cache_path, e.what());
    }
  }
  return out;
}

}  // namespace sftgo::grouping
