// The `groups` subcommand as a library function: the app wires options and calls this.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "sftgo/data/example.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::grouping {

// Computes (or loads from the cache) the groups, prints the share of important tokens (overall and
// mean per sequence) and shows the first `show_n` examples with the important tokens highlighted:
// ANSI colours when `out` is std::cout on a TTY, [[brackets]] otherwise. When html_out is not empty,
// also writes an HTML page with the same highlighting; when jsonl_out is not empty, the masks of
// every example as JSON lines (write_groups_jsonl). Returns the process exit code (0).
int run_groups_cli(const std::vector<data::TokenizedExample>& examples, const Tokenizer& tok,
                   const GroupingOptions& opts, int show_n, const std::string& html_out, std::ostream& out,
                   const std::string& jsonl_out = {});

// The machine-readable mask export: one JSON object per example, in dataset order,
//   {"index": I, "source": "FILE:LINE", "function": F, "top_k_percent": K, "num_tokens": N,
//    "num_trained": T, "num_important": M, "ids": [N ints], "tokens": [N strings],
//    "trained": [N 0/1], "group": [N 0/1], "score": [N numbers or null]}
// trained = the token is a training target (label != -100); group = 1 for the important group;
// score = the grouping function's importance (what the top-k ranks), null at untrained positions
// (not ranked) and for non-finite scores. tokens are the tokens' bytes as text (invalid UTF-8 -> U+FFFD).
// Written atomically; throws sftgo::Error naming the file when it cannot be written.
void write_groups_jsonl(const std::string& path, const std::vector<data::TokenizedExample>& examples,
                        const GroupingOutput& result, const Tokenizer& tok, const GroupingOptions& opts);

// One highlighted rendering of an example (exposed for tests): `mode` is "ansi", "brackets" or "html".
// Untrained tokens are shown plain (ANSI: dim), important ones highlighted.
std::string render_example(const data::TokenizedExample& ex, const std::vector<uint8_t>& groups, const Tokenizer& tok,
                           const std::string& mode);

}  // namespace sftgo::grouping
