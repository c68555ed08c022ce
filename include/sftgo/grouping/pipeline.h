// Whole-dataset grouping for data-parallel jobs: one rank computes the static groups, the others
// read them from the on-disk cache (grouping.h has the single-process entry points).
#pragma once

#include <vector>

#include "sftgo/data/example.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo {
class Tokenizer;
}

namespace sftgo::grouping {

// compute_groups / apply_grouping with a choice on a cache miss. compute_on_miss = true is the
// grouping.h behaviour (compute, write the cache). compute_on_miss = false reads the cache only and
// throws sftgo::Error(kIo) naming the cache file when it is missing or stale: it never loads a
// classifier or scores anything. Under W ranks (opts.cache_dir shared by every rank):
//   rank 0: apply_grouping(examples, opts, tok, keep_scores, /*compute_on_miss=*/true);
//   comm->barrier();
//   others: apply_grouping(examples, opts, tok, keep_scores, /*compute_on_miss=*/false);
// With an empty cache_dir every rank must compute (true). Making the function object loads no model
// (the LLMLingua-2 classifier is loaded on the first score, on opts.llmlingua2_device, and freed when
// the call returns).
GroupingOutput compute_groups(const std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, bool compute_on_miss);
GroupingOutput apply_grouping(std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, bool keep_scores, bool compute_on_miss);

}  // namespace sftgo::grouping
