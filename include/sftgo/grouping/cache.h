// On-disk cache of a static grouping function's output (scores + per-sequence masks), inside core's
// cache envelope (sftgo/core/cache_file.h: kind kGroups, version kGroupingCacheVersion, the key).
// Payload (little-endian): u64 examples, u64 tokens, {per example: u32 length}, {all groups, u8 per
// token}, {all scores, f32 per token}. Anything that fails validation is recomputed.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sftgo/core/hash.h"  // hash64, used by the functions for their cache identity
#include "sftgo/data/example.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo::grouping {

// 2: core's cache envelope (the example and token counts moved into the payload).
inline constexpr uint32_t kGroupingCacheVersion = 2;

// Fingerprint of the examples' ids and labels, used when the caller gives none.
uint64_t examples_fingerprint(const std::vector<data::TokenizedExample>& examples);
// Hash of (dataset fingerprint, function name, params, k, cache version).
uint64_t grouping_cache_key(const std::string& dataset_fingerprint, const std::string& function_name,
                            const std::string& params, double k_percent);
// <cache_dir>/groups-<function>-<key hex>.bin
std::string grouping_cache_path(const std::string& cache_dir, const std::string& function_name, uint64_t key);

void save_grouping_cache(const std::string& path, uint64_t key, const GroupingOutput& out);
// nullopt with a warning saying why (missing is silent) when the file is unusable or does not match
// the examples' lengths.
std::optional<GroupingOutput> load_grouping_cache(const std::string& path, uint64_t key,
                                                  std::span<const data::TokenizedExample> examples);
// The same, for rows of the given token counts (a part file of shard.h holds a share's rows).
std::optional<GroupingOutput> load_grouping_rows(const std::string& path, uint64_t key,
                                                 std::span<const size_t> lengths);

}  // namespace sftgo::grouping
