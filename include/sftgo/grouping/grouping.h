// Grouping functions: split each sequence's trained (response) tokens into the top-k% most important
// (group 1) and the rest (group 0) for the SFT-GO loss. No LibTorch in this header.
//
// Tie rule (everywhere): a higher score ranks first; equal scores rank the earlier position first
// (in batch selection: the earlier sequence, then the earlier position). NaN ranks below everything.
// Count rule: a sequence with n trained tokens gets ceil(k% * n) important tokens (so any k > 0 marks
// at least one token of a non-empty sequence); untrained tokens are always group 0.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sftgo/config/options.h"
#include "sftgo/data/example.h"

namespace sftgo {
class Tokenizer;
}

namespace sftgo::grouping {

inline constexpr uint8_t kGroupOther = 0;
inline constexpr uint8_t kGroupImportant = 1;
// Key of the per-token importance in TokenizedExample::scores when apply_grouping keeps scores
// (needed for selection=batch, where the mask depends on the batch composition).
inline constexpr const char* kScoreKey = "grouping";
// Key under which the data/model modules deliver the reference model's per-token losses (Rho-1).
inline constexpr const char* kRefLossKey = "ref_loss";

// Plain options; train::grouping_options maps the config (+ data cache settings) onto this.
struct GroupingOptions {
  std::string function = "tfidf";      // a registered name (registry.cpp lists the built-ins)
  double top_k_percent = 30.0;         // share of trained tokens marked important, in [0, 100]
  std::string selection = "sequence";  // sequence | batch
  uint64_t seed = 0;                   // `random`
  // The function's own options (GroupingFunctionSpec::options), by key: grouping.tfidf_sublinear_tf is
  // params "tfidf_sublinear_tf". make_grouping_function fills in the defaults of keys not given and
  // checks the given ones against the declaration.
  OptionValues params;
  std::string cache_dir;               // "" = no on-disk cache
  std::string dataset_fingerprint;     // from the data module's cache key; "" = hash the examples
  int num_threads = 0;                 // 0 = std::thread::hardware_concurrency()
};

// What a function needs before it can score; the trainer uses this to decide what to load.
struct Requirements {
  bool corpus_statistics = false;   // fit() must see the whole training set (every rank fits it)
  bool reference_model = false;     // a second (frozen) model scores tokens (LLMLingua-2, Rho-1)
  bool current_model_loss = false;  // needs the training model's per-token loss: selected per step
  bool tokenizer = false;           // needs the Llama tokenizer (text spans)
};

class DynamicGroupingFunction;  // grouping/dynamic.h: groups chosen at every step (LibTorch)
class StaticGroupingFunction;

// What every grouping function declares. The trainer decides what to load and when to group from
// requirements() alone, never from the name: a static function (no current_model_loss) is a
// StaticGroupingFunction whose masks are computed once per dataset and cached; a dynamic one is a
// DynamicGroupingFunction (dynamic.h) that picks groups from the training forward of every step.
class GroupingFunction {
 public:
  virtual ~GroupingFunction();
  virtual std::string name() const = 0;
  virtual Requirements requirements() const = 0;
  bool is_static() const { return !requirements().current_model_loss; }
  // Canonical "key=value;..." of every parameter that changes the scores (part of the cache key).
  virtual std::string params() const = 0;
};

// Scores each example from the data (and the corpus) alone.
class StaticGroupingFunction : public GroupingFunction {
 public:
  // Corpus statistics (called once, before score()); default: nothing to learn.
  virtual void fit(const std::vector<data::TokenizedExample>& corpus) {}
  // Per-token importance, ex.ids.size() long; only trained positions are meaningful (others 0).
  // Must be thread-safe after fit().
  virtual std::vector<float> score(const data::TokenizedExample& ex) const = 0;
  // score() of each example of a run (the pipeline calls this, on one rank's share of a dataset); a
  // function that batches a model over many examples (LLMLingua-2) overrides it. Default: score() on
  // `threads` workers (0 = all cores).
  virtual std::vector<std::vector<float>> score_many(std::span<const data::TokenizedExample> examples,
                                                     int threads) const;
  // A function whose score_many batches across examples (so its floats depend on an example's batch
  // neighbours) returns a token budget: the pipeline then calls score_many on fixed runs of consecutive
  // examples of about this many tokens (split where the budget is reached), the same runs in every
  // world size, so W ranks write the cache one process writes, bit for bit. 0 (default): any runs.
  virtual uint64_t score_run_tokens() const { return 0; }
  // The group mask of one sequence from its score() output; default: select_top_k.
  virtual std::vector<uint8_t> groups(const data::TokenizedExample& ex, std::span<const float> scores,
                                      double k_percent) const;
};

// The static interface of fn; throws sftgo::Error(kConfig) naming fn when its groups depend on the
// training model (what = the caller's purpose, for the message).
StaticGroupingFunction& as_static(GroupingFunction& fn, const std::string& what);

// 1 where labels[t] != kIgnoreLabel.
std::vector<uint8_t> trained_mask(const data::TokenizedExample& ex);
// ceil(k_percent/100 * n_trained) (with a 1e-9 tolerance so 30% of 10 is 3), clamped to [0, n].
int64_t num_important(int64_t n_trained, double k_percent);
// The tie-ruled top-k% mask of one sequence: 1 for the chosen trained positions, 0 elsewhere.
std::vector<uint8_t> select_top_k(std::span<const float> scores, std::span<const uint8_t> trained_mask,
                                  double k_percent);
// Batch selection: one top-k% over all trained tokens of the batch (ties: earlier sequence first).
std::vector<std::vector<uint8_t>> select_top_k_batch(const std::vector<std::span<const float>>& scores,
                                                     const std::vector<std::span<const uint8_t>>& trained,
                                                     double k_percent);

// ---- Registry -------------------------------------------------------------------------------------
// `tok` may be null; functions whose requirements().tokenizer is set throw kUsage without it. The
// factory gets opts.params with every declared option present (defaults filled in, values checked).
using GroupingFactory =
    std::function<std::unique_ptr<GroupingFunction>(const GroupingOptions& opts, const Tokenizer* tok)>;

// What a grouping function brings: its name, its own config keys (grouping.<key>: declared here,
// documented by `sftgo-train config --reference`, checked when a config loads) and its factory.
struct GroupingFunctionSpec {
  std::string name;
  std::vector<OptionSpec> options;
  GroupingFactory make;
};

// The built-ins are one explicit list in src/grouping/registry.cpp. Runtime registration (plugins,
// tests) adds a function the same way, options included (they become config keys at once). Throws
// kInternal when the name or an option key is taken.
void register_grouping_function(GroupingFunctionSpec spec);
void register_grouping_function(const std::string& name, GroupingFactory factory);  // no options
std::vector<std::string> grouping_function_names();  // sorted
// Throws sftgo::Error(kConfig) naming the registered functions (and the nearest) when `name` is not one;
// make_grouping_function and `sftgo-train config` both check with it.
void check_grouping_function_name(const std::string& name);
// Throws sftgo::Error(kConfig) naming the registered functions and the closest one, or a bad option.
std::unique_ptr<GroupingFunction> make_grouping_function(const GroupingOptions& opts, const Tokenizer* tok = nullptr);

// ---- Whole-dataset pipeline -------------------------------------------------------------------------
struct GroupingOutput {
  std::vector<std::vector<uint8_t>> groups;  // per example, ids.size() long (top-k per sequence)
  std::vector<std::vector<float>> scores;    // per example, ids.size() long
  bool from_cache = false;
  std::string cache_path;  // "" when not cached
  double seconds = 0;      // fit + score + select (or load)
};

// Fits, scores and selects every example of a static function, in parallel, through the on-disk
// cache when opts.cache_dir is set. Throws kConfig for non-static functions (rho1: see rho1.h).
GroupingOutput compute_groups(const std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok = nullptr);
// compute_groups, then fills ex.groups (and ex.scores[kScoreKey] when keep_scores).
GroupingOutput apply_grouping(std::vector<data::TokenizedExample>& examples, const GroupingOptions& opts,
                              const Tokenizer* tok = nullptr, bool keep_scores = false);

struct GroupShare {
  int64_t trained_tokens = 0;
  int64_t important_tokens = 0;
  double overall = 0;            // important / trained over the dataset
  double mean_per_sequence = 0;  // mean of per-sequence shares over sequences with trained tokens
};
GroupShare group_share(const std::vector<data::TokenizedExample>& examples,
                       const std::vector<std::vector<uint8_t>>& groups);

}  // namespace sftgo::grouping
