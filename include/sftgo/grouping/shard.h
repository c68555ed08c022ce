// Data-parallel computation of a grouping cache (static groups, Rho-1 reference losses): every rank
// computes a contiguous share of the examples and writes it as a part file next to the cache; the
// parts are merged, in example order, into the cache file one process would have written. The wait
// for the other ranks' parts is a file poll, not a collective, so it is not bounded by a process
// group's timeout: an N-rank job scores N times faster and no rank idles inside a collective.
// No LibTorch and no dependency on sftgo_dist: the caller says who this process is (ShardJob).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "sftgo/data/example.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo::grouping {

// Examples [begin, end).
struct ShareRange {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
  bool empty() const { return end == begin; }
};

// `world` contiguous shares of the examples whose costs (e.g. token counts) are given, in rank order,
// covering [0, n) exactly once: share r ends at the first example whose prefix cost reaches
// (r+1)/world of the total (ties: the earlier boundary), so each share holds about total/world.
// Shares can be empty (world > n, or one example costs more than a share). Throws kInternal for
// world < 1.
std::vector<ShareRange> split_shares(std::span<const uint64_t> costs, int world);

// Who this process is in a data-parallel job, and how long it waits for the others.
struct ShardJob {
  int rank = 0;
  int world_size = 1;
  // After its own share, a rank waits for the others' parts at most wait_timeout_s plus twice the time
  // its own share took (shares hold equal costs, so a healthy peer is done within about that), then
  // throws sftgo::Error(kDist) naming the missing parts. A peer that dies is noticed sooner by the
  // caller's watchdog (dist: no heartbeat for dist.timeout_s ends the process).
  double wait_timeout_s = 600;
  double poll_s = 0.2;          // how often the files are looked at
  double progress_log_s = 30;   // a "waiting for ..." line this often
};

// How the examples may be cut into shares: units of examples that are computed together (one example
// each, or the examples of one forward batch), in computing order. A share is a run of whole units, so
// each unit is computed exactly as in a single process: a function whose values depend on what an
// example is batched with (padding changes how a GPU blocks a matrix product) still gives the same bits.
struct ShardUnits {
  std::vector<size_t> order;    // every example index once, in computing order
  std::vector<size_t> ends;     // unit u is order[ends[u-1] (0 for u = 0) .. ends[u])
  std::vector<uint64_t> costs;  // per unit (e.g. tokens), for split_shares
  size_t size() const { return ends.size(); }
  size_t first(size_t u) const { return u == 0 ? 0 : ends[u - 1]; }  // position in order
};
// One unit per example, in dataset order, costing its token count.
ShardUnits per_example_units(const std::vector<data::TokenizedExample>& examples);

// Rank r's part of a cache: "<cache_path>.part-<r>-of-<w>" (the cache key is in cache_path's name).
std::string grouping_part_path(const std::string& cache_path, int rank, int world);

// Envelope key of rank r's part: the cache key, r, world, the units and the share, so a part of another
// computation, world size or split is never mixed in (read_cache_file rejects it).
uint64_t grouping_part_key(uint64_t cache_key, int rank, int world, const ShardUnits& units, ShareRange share);

// compute(units, share): groups and scores of the examples of units [share.begin, share.end), one row
// per example in `order` (units.first(share.begin) .. units.first(share.end)).
using ShareCompute = std::function<GroupingOutput(const ShardUnits& units, ShareRange share)>;

// The one implementation of "compute a grouping cache across ranks and merge it", on every rank:
//  1. the cache loads (key and lengths checked): return it (from_cache = true);
//  2. no cache_path, or world 1: compute all units here, write the cache when there is a path;
//  3. otherwise compute this rank's share (split_shares over the unit costs) -- or reuse a valid part
//     a crashed run of the same computation left -- and write it atomically as the rank's part (kIo
//     naming the file when it cannot be written: every rank must be able to write cache_path's
//     directory, which must be the same directory for every rank, a shared filesystem across nodes);
//     then poll until every part loads (or the cache appears, written by rank 0) and merge the
//     parts. Rank 0 writes the merged cache and removes the parts (a failed write is a warning: the
//     groups are in memory and the parts stay for the next run).
// Rows come back in example order; the merged cache is byte-identical to one process's whenever
// compute() gives a unit the same values wherever it runs. `what` names the cache in log lines.
GroupingOutput compute_sharded(const std::vector<data::TokenizedExample>& examples, const std::string& cache_path,
                               uint64_t key, const ShardJob& job, const ShardUnits& units, const ShareCompute& compute,
                               const std::string& what);

}  // namespace sftgo::grouping
