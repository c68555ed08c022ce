// The `sftgo data` subcommand as a library function; the app parses flags/config and calls it.
#pragma once

#include <ostream>

#include "sftgo/data/dataset.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::data {

// Prepares the dataset (using the cache when opts.cache_dir is set) and prints: records, examples,
// tokens, trained tokens, truncated/dropped/bad counts, a length histogram, and with dump_n > 0 the
// first dump_n examples token by token with trained tokens marked: ANSI green when `out` is a
// terminal, [[...]] otherwise. Returns the process exit code (0); errors propagate as sftgo::Error.
int run_data_cli(const DataOptions& opts, const Tokenizer& tok, int dump_n, std::ostream& out);

}  // namespace sftgo::data
