// Preparation: read -> template -> fit to max_seq_len -> a tokenized dataset, cached on disk. No LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sftgo/data/conversation.h"
#include "sftgo/data/example.h"
#include "sftgo/data/template.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::data {

// Everything the data module needs; the app maps the YAML config onto it.
struct DataOptions {
  std::string path;  // .jsonl or .json
  DataFormat format = DataFormat::kAuto;
  TemplateKind template_kind = TemplateKind::kLlama3;
  int64_t max_seq_len = 2048;
  Truncation truncation = Truncation::kTruncate;
  OnBadRecord on_bad_record = OnBadRecord::kStop;
  std::optional<std::string> system_prompt;  // prepended where a conversation has none
  std::string cache_dir;                     // "" = no cache
  bool packing = false;
  uint64_t seed = 0;
  int64_t micro_batch_size = 8;    // examples per micro-batch (count mode)
  int64_t micro_batch_tokens = 0;  // > 0: token budget per micro-batch instead
};

struct DataStats {
  int64_t records = 0;           // conversations read
  int64_t bad_records = 0;       // skipped by on_bad_record=skip
  int64_t examples = 0;          // kept after fitting
  int64_t truncated = 0;         // kept but cut to max_seq_len
  int64_t dropped_too_long = 0;  // truncation=drop
  int64_t dropped_no_trained = 0;
  int64_t tokens = 0;  // over kept examples
  int64_t trained_tokens = 0;
  int64_t max_len = 0;
};

struct PreparedDataset {
  std::vector<TokenizedExample> examples;  // examples[i].index == i
  DataStats stats;
  std::string data_format;  // as read ("lima", ...)
  bool from_cache = false;
  std::string cache_path;  // "" when not cached
  std::vector<int64_t> lengths() const;
};

// Reads, tokenizes and fits the dataset, or loads it from opts.cache_dir when a valid cache exists.
// The cache key hashes: the data file's absolute path, size and mtime; the tokenizer.json bytes; the
// format, template, max_seq_len, truncation, on_bad_record and system prompt; the cache version.
// A corrupt or mismatching cache file is rebuilt with a warning, never trusted.
PreparedDataset prepare_dataset(const DataOptions& opts, const Tokenizer& tok);

// The cache file prepare_dataset would use ("" when opts.cache_dir is empty).
std::string cache_path_for(const DataOptions& opts, const Tokenizer& tok);

// Binary cache: core's cache envelope (sftgo/core/cache_file.h, kind kDataset) around a little-endian
// payload (stats, source file names, examples: length, ids, a trained-flag byte per token, source
// file index + line, truncated flag). Groups/scores are not cached: they are filled after preparation.
void save_dataset_cache(const std::string& path, uint64_t key, const PreparedDataset& ds);
// nullopt (with a warning saying why) when the file is missing, truncated, corrupt or has another key.
std::optional<PreparedDataset> load_dataset_cache(const std::string& path, uint64_t key);

}  // namespace sftgo::data
