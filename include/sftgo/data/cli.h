// The `sftgo data` subcommand as a library function; the app parses flags/config and calls it.
#pragma once

#include <ostream>
#include <string>

#include "sftgo/data/dataset.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::data {

// Prepares the dataset (using the cache when opts.cache_dir is set) and prints: records, examples,
// tokens, trained tokens, truncated/dropped/bad counts, a length histogram, and with dump_n > 0 the
// first dump_n examples token by token with trained tokens marked: ANSI green when `out` is a
// terminal, [[...]] otherwise. Returns the process exit code (0); errors propagate as sftgo::Error.
int run_data_cli(const DataOptions& opts, const Tokenizer& tok, int dump_n, std::ostream& out);

// `sftgo data --convert OUT`: reads opts.path as opts.format (opts.on_bad_record applies) and writes
// every accepted conversation as one `messages` JSONL line (to_messages_json). OUT "-" streams to
// `out`; any other path is written to a temporary sibling that is renamed into place at the end, so
// a failed conversion never leaves a partial file. Refuses to overwrite the input. A summary (and a
// warning where the alpaca template would print an Alpaca `input` differently) goes to `log`.
// Needs no tokenizer. Returns the process exit code (0); errors propagate as sftgo::Error.
int run_data_convert(const DataOptions& opts, const std::string& out_path, std::ostream& out, std::ostream& log);

}  // namespace sftgo::data
