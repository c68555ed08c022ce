#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/data/cli.h"
#include "sftgo/data/dataset.h"
#include "test_util.h"

namespace sftgo::data {
namespace {

using testing::TempDir;

PreparedDataset small_dataset() {
  PreparedDataset ds;
  for (int i = 0; i < 5; ++i) {
    TokenizedExample ex;
    ex.index = i;
    for (int t = 0; t < 3 + i; ++t) {
      ex.ids.push_back(100 + t);
      ex.labels.push_back(t >= 2 ? 100 + t : kIgnoreLabel);
    }
    ex.source = {i < 3 ? "a.jsonl" : "b.jsonl", 10 + i};
    ex.truncated = i == 4;
    ds.stats.examples++;
    ds.examples.push_back(ex);
  }
  ds.stats.records = 7;
  ds.stats.truncated = 1;
  ds.data_format = "chat";
  return ds;
}

void expect_same(const PreparedDataset& a, const PreparedDataset& b) {
  ASSERT_EQ(a.examples.size(), b.examples.size());
  for (size_t i = 0; i < a.examples.size(); ++i) {
    EXPECT_EQ(a.examples[i].ids, b.examples[i].ids);
    EXPECT_EQ(a.examples[i].labels, b.examples[i].labels);
    EXPECT_EQ(a.examples[i].source.file, b.examples[i].source.file);
    EXPECT_EQ(a.examples[i].source.line, b.examples[i].source.line);
    EXPECT_EQ(a.examples[i].truncated, b.examples[i].truncated);
    EXPECT_EQ(a.examples[i].index, b.examples[i].index);
  }
  EXPECT_EQ(a.stats.records, b.stats.records);
  EXPECT_EQ(a.stats.truncated, b.stats.truncated);
  EXPECT_EQ(a.stats.tokens, b.stats.tokens);
  EXPECT_EQ(a.data_format, b.data_format);
}

TEST(DataCache, RoundTrip) {
  TempDir dir;
  auto path = dir.path() + "/c.bin";
  auto ds = small_dataset();
  save_dataset_cache(path, 1234, ds);
  auto back = load_dataset_cache(path, 1234);
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->from_cache);
  expect_same(ds, *back);
  EXPECT_FALSE(load_dataset_cache(path, 999).has_value());  // other key
  EXPECT_FALSE(load_dataset_cache(dir.path() + "/missing.bin", 1234).has_value());
}

TEST(DataCache, CorruptFilesAreRejectedNeverCrash) {
  TempDir dir;
  auto path = dir.path() + "/c.bin";
  save_dataset_cache(path, 7, small_dataset());
  const std::string good = read_file(path);
  // Truncations and flipped bits (header and payload) must all be detected.
  for (size_t cut = 0; cut < good.size(); cut += 7) {
    write_file_atomic(path, good.substr(0, cut));
    EXPECT_FALSE(load_dataset_cache(path, 7).has_value()) << "cut at " << cut;
  }
  for (size_t i = 0; i < good.size(); i += i < 40 ? 1 : 5) {  // every header byte, then a stride
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    write_file_atomic(path, bad);
    EXPECT_FALSE(load_dataset_cache(path, 7).has_value()) << "flip at " << i;
  }
  write_file_atomic(path, good + "x");
  EXPECT_FALSE(load_dataset_cache(path, 7).has_value());
}

DataOptions demo_options(const std::string& cache_dir) {
  DataOptions o;
  o.path = std::string(SFTGO_SOURCE_DIR) + "/data/demo/demo_sft.jsonl";
  o.format = DataFormat::kChat;
  o.max_seq_len = 256;
  o.cache_dir = cache_dir;
  return o;
}

TEST(DataPrepare, ColdThenWarmFromCache) {
  SFTGO_NEED_TOKENIZER(tok);
  TempDir dir;
  auto opts = demo_options(dir.path());
  auto cold = prepare_dataset(opts, tok);
  EXPECT_FALSE(cold.from_cache);
  EXPECT_GE(cold.stats.examples, 300);
  EXPECT_EQ(cold.stats.records, cold.stats.examples + cold.stats.dropped_no_trained + cold.stats.dropped_too_long);
  for (size_t i = 0; i < cold.examples.size(); ++i) EXPECT_EQ(cold.examples[i].index, static_cast<int64_t>(i));
  auto warm = prepare_dataset(opts, tok);
  EXPECT_TRUE(warm.from_cache);
  expect_same(cold, warm);
  // Another max_seq_len is another cache entry.
  auto other = opts;
  other.max_seq_len = 64;
  EXPECT_NE(cache_path_for(other, tok), cache_path_for(opts, tok));
  // A corrupted cache is rebuilt (with a warning), then valid again.
  std::string bytes = read_file(cold.cache_path);
  bytes[bytes.size() / 2] ^= 0x55;
  write_file_atomic(cold.cache_path, bytes);
  auto rebuilt = prepare_dataset(opts, tok);
  EXPECT_FALSE(rebuilt.from_cache);
  expect_same(cold, rebuilt);
  EXPECT_TRUE(prepare_dataset(opts, tok).from_cache);
}

TEST(DataPrepare, TruncationPolicies) {
  SFTGO_NEED_TOKENIZER(tok);
  auto opts = demo_options("");
  opts.max_seq_len = 40;
  opts.truncation = Truncation::kDrop;
  auto dropped = prepare_dataset(opts, tok);
  EXPECT_GT(dropped.stats.dropped_too_long, 0);
  EXPECT_EQ(dropped.stats.truncated, 0);
  EXPECT_LE(dropped.stats.max_len, 40);
  opts.truncation = Truncation::kTruncate;
  auto cut = prepare_dataset(opts, tok);
  EXPECT_EQ(cut.stats.dropped_too_long, 0);
  EXPECT_GT(cut.stats.truncated, 0);
  EXPECT_EQ(cut.stats.max_len, 40);
  EXPECT_EQ(cut.stats.examples + cut.stats.dropped_no_trained, dropped.stats.examples + dropped.stats.dropped_too_long);
  for (const auto& ex : cut.examples) EXPECT_GT(ex.num_trained(), 0);
}

TEST(DataPrepare, SkipBadRecords) {
  SFTGO_NEED_TOKENIZER(tok);
  TempDir dir;
  const std::string good = R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
  auto path = dir.write("d.jsonl", good + "\n{\"messages\": 3}\n" + good + "\n");
  DataOptions opts;
  opts.path = path;
  EXPECT_THROW(prepare_dataset(opts, tok), Error);
  opts.on_bad_record = OnBadRecord::kSkip;
  auto ds = prepare_dataset(opts, tok);
  EXPECT_EQ(ds.stats.examples, 2);
  EXPECT_EQ(ds.stats.bad_records, 1);
  EXPECT_EQ(ds.examples[1].source.line, 3);
}

TEST(DataCli, PrintsStatsAndMarksTrainedTokens) {
  SFTGO_NEED_TOKENIZER(tok);
  auto opts = demo_options("");
  std::ostringstream out;
  EXPECT_EQ(run_data_cli(opts, tok, 2, out), 0);
  const std::string s = out.str();
  for (const char* part : {"examples:", "trained tokens:", "truncated:", "dropped (too long):", "length histogram",
                           "--- example 0", "--- example 1", "[[", "<|eot_id|>]]"})
    EXPECT_NE(s.find(part), std::string::npos) << part << "\n" << s;
  EXPECT_EQ(s.find("\033["), std::string::npos);  // no colour into a non-terminal
}

}  // namespace
}  // namespace sftgo::data
