// Whole-dataset grouping: fit once, score and select in parallel, through the on-disk cache.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "sftgo/core/format.h"

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/grouping/shard.h"

namespace sftgo::grouping {
namespace {

// Runs body(i) for i in [0, n) on `threads` workers pulling small chunks (example lengths vary a lot).
template <typename Body>
void parallel_for(size_t n, int threads, Body body) {
  const size_t workers = std::clamp<size_t>(static_cast<size_t>(threads), 1, std::max<size_t>(n, 1));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) body(i);
    return;
  }
  constexpr size_t kChunk = 64;
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&] {
    try {
      for (size_t begin; (begin = next.fetch_add(kChunk)) < n;)
        for (size_t i = begin; i < std::min(n, begin + kChunk); ++i) body(i);
    } catch (...) {
      std::lock_guard lock(error_mu);
      if (!error) error = std::current_exception();
      next = n;  // stop the others early
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Units of consecutive examples, each closed once it holds `budget` tokens or more.
ShardUnits token_runs(const std::vector<data::TokenizedExample>& examples, uint64_t budget) {
  ShardUnits u;
  uint64_t held = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    u.order.push_back(i);
    held += examples[i].ids.size();
    if (held >= budget || i + 1 == examples.size()) {
      u.ends.push_back(i + 1);
      u.costs.push_back(held);
      held = 0;
    }
  }
  return u;
}

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

GroupingOutput compute_groups(const std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok) {
  return compute_groups(examples, opts, tok, ShardJob{});
}

std::vector<std::vector<float>> StaticGroupingFunction::score_many(std::span<const data::TokenizedExample> examples,
                                                                   int threads) const {
  std::vector<std::vector<float>> out(examples.size());
  parallel_for(examples.size(), resolve_threads(threads), [&](size_t i) { out[i] = score(examples[i]); });
  return out;
}

// Making the function object loads no model: the LLMLingua-2 classifier is loaded by the first score
// (grouping/llmlingua2_torch.h), so a cache hit never touches it, and `fn` going out of scope here
// frees it (and its GPU memory) once the groups are computed.
GroupingOutput compute_groups(const std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, const ShardJob& job) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  for (const auto& ex : examples)
    SFTGO_CHECK(ex.labels.size() == ex.ids.size(), ErrorKind::kInternal, "example ", ex.index, ": ", ex.labels.size(),
                " labels for ", ex.ids.size(), " ids");
  (void)num_important(0, opts.top_k_percent);  // validates k before any work
  auto made = make_grouping_function(opts, tok);
  StaticGroupingFunction* fn = &as_static(*made, "groups precomputed for a dataset");

  std::string cache_path;
  uint64_t key = 0;
  if (!opts.cache_dir.empty()) {
    const std::string fingerprint = opts.dataset_fingerprint.empty()
                                        ? sftgo::format("content:{:016x}", examples_fingerprint(examples))
                                        : opts.dataset_fingerprint;
    key = grouping_cache_key(fingerprint, fn->name(), fn->params(), opts.top_k_percent);
    cache_path = grouping_cache_path(opts.cache_dir, fn->name(), key);
  }
  // One share: corpus statistics come from every example (cheap; every rank fits them), the scoring
  // and the selection only from the share's.
  // Units are runs of examples in dataset order, so a share is a contiguous run of examples.
  const uint64_t run_tokens = fn->score_run_tokens();
  const ShardUnits units = run_tokens == 0 ? per_example_units(examples) : token_runs(examples, run_tokens);
  bool fitted = false;
  auto compute_share = [&](const ShardUnits& u, ShareRange r) {
    if (!fitted && fn->requirements().corpus_statistics) fn->fit(examples);
    fitted = true;
    const size_t first = u.first(r.begin);
    const std::span<const data::TokenizedExample> share(examples.data() + first, u.first(r.end) - first);
    GroupingOutput part;
    if (run_tokens == 0) {
      part.scores = fn->score_many(share, opts.num_threads);
    } else {
      for (size_t k = r.begin; k < r.end; ++k)  // one call per unit: the same batches on any rank
        for (auto& row : fn->score_many(
                 std::span<const data::TokenizedExample>(examples.data() + u.first(k), u.ends[k] - u.first(k)),
                 opts.num_threads))
          part.scores.push_back(std::move(row));
    }
    SFTGO_CHECK(part.scores.size() == share.size(), ErrorKind::kInternal, "grouping function '", fn->name(),
                "' returned ", part.scores.size(), " score rows for ", share.size(), " examples");
    part.groups.resize(share.size());
    parallel_for(share.size(), resolve_threads(opts.num_threads), [&](size_t i) {
      SFTGO_CHECK(part.scores[i].size() == share[i].ids.size(), ErrorKind::kInternal, "grouping function '",
                  fn->name(), "' returned ", part.scores[i].size(), " scores for ", share[i].ids.size(), " tokens");
      part.groups[i] = fn->groups(share[i], part.scores[i], opts.top_k_percent);
    });
    return part;
  };
  GroupingOutput out = compute_sharded(examples, cache_path, key, job, units, compute_share, fn->name() + " groups");
  out.seconds = elapsed();
  if (out.from_cache)
    log_info("grouping: {} groups loaded from {} ({:.2f} s)", fn->name(), cache_path, out.seconds);
  else
    log_info("grouping: {} groups for {} examples computed in {:.2f} s{}", fn->name(), examples.size(), out.seconds,
             job.world_size > 1 && !cache_path.empty() ? sftgo::format(" ({} ranks)", job.world_size) : "");
  return out;
}

GroupingOutput apply_grouping(std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, bool keep_scores) {
  return apply_grouping(examples, opts, tok, keep_scores, ShardJob{});
}

GroupingOutput apply_grouping(std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok, bool keep_scores, const ShardJob& job) {
  auto out = compute_groups(examples, opts, tok, job);
  for (size_t i = 0; i < examples.size(); ++i) {
    examples[i].groups = out.groups[i];
    if (keep_scores) examples[i].scores[kScoreKey] = out.scores[i];
  }
  return out;
}

GroupShare group_share(const std::vector<data::TokenizedExample>& examples,
                       const std::vector<std::vector<uint8_t>>& groups) {
  SFTGO_CHECK(groups.size() == examples.size(), ErrorKind::kInternal, "group_share: ", groups.size(), " masks for ",
              examples.size(), " examples");
  GroupShare s;
  double sum_share = 0;
  int64_t sequences = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& ex = examples[i];
    int64_t trained = 0, important = 0;
    for (size_t t = 0; t < ex.labels.size(); ++t) {
      if (ex.labels[t] == data::kIgnoreLabel) continue;
      ++trained;
      important += t < groups[i].size() && groups[i][t] == kGroupImportant;
    }
    s.trained_tokens += trained;
    s.important_tokens += important;
    if (trained > 0) {
      sum_share += static_cast<double>(important) / static_cast<double>(trained);
      ++sequences;
    }
  }
  s.overall =
      s.trained_tokens > 0 ? static_cast<double>(s.important_tokens) / static_cast<double>(s.trained_tokens) : 0;
  s.mean_per_sequence = sequences > 0 ? sum_share / static_cast<double>(sequences) : 0;
  return s;
}

}  // namespace sftgo::grouping
