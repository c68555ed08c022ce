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
// also writes an HTML page with the same highlighting. Returns the process exit code (0).
int run_groups_cli(const std::vector<data::TokenizedExample>& examples, const Tokenizer& tok,
                   const GroupingOptions& opts, int show_n, const std::string& html_out, std::ostream& out);

// One highlighted rendering of an example (exposed for tests): `mode` is "ansi", "brackets" or "html".
// Untrained tokens are shown plain (ANSI: dim), important ones highlighted.
std::string render_example(const data::TokenizedExample& ex, const std::vector<uint8_t>& groups,
                           const Tokenizer& tok, const std::string& mode);

}  // namespace sftgo::grouping
