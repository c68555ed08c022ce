// Whole-dataset grouping for data-parallel jobs: every rank computes a share of the static groups and
// the shares are merged through the on-disk cache (shard.h); grouping.h has the single-process entry
// points.
#pragma once

#include <vector>

#include "sftgo/data/example.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/shard.h"

namespace sftgo {
class Tokenizer;
}

namespace sftgo::grouping {

// compute_groups / apply_grouping as one rank of `job`: with opts.cache_dir set and several ranks,
// each rank fits the corpus statistics (cheap, on every rank), scores and selects its share of the
// examples and the shares are merged into the cache (compute_sharded): every rank returns the groups
// of every example, and the cache equals, byte for byte, the one a single process writes. With an
// empty cache_dir every rank computes all. Making the function object loads no model (the LLMLingua-2
// classifier is loaded on the first score, on opts.llmlingua2_device, and freed when the call
// returns), so a cache hit never loads it.
GroupingOutput compute_groups(const std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, const ShardJob& job);
GroupingOutput apply_grouping(std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, bool keep_scores, const ShardJob& job);

}  // namespace sftgo::grouping
