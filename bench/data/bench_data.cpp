// Times prepare_dataset on a generated Alpaca-style JSON array of 52,000 examples (the size of
// Stanford Alpaca): cold (read + tokenize + write cache) and warm (validated cache load), plus the
// same data as JSONL without a cache.
// Usage: bench_data [tokenizer dir] [num examples]   (default: <repo>/../shared/data/llama3, 52000)
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "sftgo/core/log.h"
#include "sftgo/core/timer.h"
#include "sftgo/data/dataset.h"

namespace {

const char* kWords[] = {"the",     "model", "data",     "answer",  "question", "explain", "simple",    "number",
                        "list",    "write", "short",    "story",   "about",    "a",       "cat",       "river",
                        "city",    "code",  "function", "returns", "value",    "because", "however",   "example",
                        "summary", "three", "reasons",  "why",     "people",   "learn",   "languages", "quickly",
                        "naïve",   "café",  "42",       "2024,"};

std::string words(std::mt19937& rng, int lo, int hi) {
  std::uniform_int_distribution<int> n(lo, hi), w(0, static_cast<int>(std::size(kWords)) - 1);
  std::string s;
  for (int i = 0, k = n(rng); i < k; ++i) {
    if (i) s += (i % 17 == 0) ? "\n" : " ";
    s += kWords[w(rng)];
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  sftgo::init_logging(0, 1, sftgo::LogLevel::kWarn);
  const std::string tok_dir = argc > 1 ? argv[1] : std::string(SFTGO_SOURCE_DIR) + "/../shared/data/llama3";
  const int n = argc > 2 ? std::atoi(argv[2]) : 52000;
  const fs::path dir = fs::temp_directory_path() / "sftgo_bench_data";
  fs::remove_all(dir);
  fs::create_directories(dir);

  // Alpaca-like lengths: instruction ~5-25 words, 40% with an input, output ~10-120 words.
  std::mt19937 rng(7);
  nlohmann::json arr = nlohmann::json::array();
  std::ofstream jsonl(dir / "alpaca.jsonl");
  for (int i = 0; i < n; ++i) {
    nlohmann::json rec = {{"instruction", words(rng, 5, 25)},
                          {"input", rng() % 10 < 4 ? words(rng, 3, 40) : ""},
                          {"output", words(rng, 10, 120)}};
    jsonl << rec.dump() << "\n";
    arr.push_back(std::move(rec));
  }
  jsonl.close();
  std::ofstream(dir / "alpaca.json") << arr.dump(1);

  sftgo::Timer t;
  auto tok = sftgo::Tokenizer::load(tok_dir);
  std::printf("tokenizer load: %.3f s\n", t.seconds());

  sftgo::data::DataOptions opts;
  opts.path = (dir / "alpaca.json").string();
  opts.template_kind = sftgo::data::TemplateKind::kAlpaca;
  opts.max_seq_len = 512;
  opts.cache_dir = (dir / "cache").string();
  t.reset();
  auto cold = sftgo::data::prepare_dataset(opts, tok);
  const double cold_s = t.seconds();
  t.reset();
  auto warm = sftgo::data::prepare_dataset(opts, tok);
  const double warm_s = t.seconds();
  const auto& s = cold.stats;
  std::printf("examples %lld, tokens %lld (trained %lld), truncated %lld, cache %.1f MB\n",
              static_cast<long long>(s.examples), static_cast<long long>(s.tokens),
              static_cast<long long>(s.trained_tokens), static_cast<long long>(s.truncated),
              static_cast<double>(fs::file_size(cold.cache_path)) / 1e6);
  std::printf("cold (JSON array, alpaca template, writes cache): %.2f s  (%.0f examples/s, %.2f M tokens/s)\n", cold_s,
              n / cold_s, static_cast<double>(s.tokens) / cold_s / 1e6);
  std::printf("warm (from cache, %s): %.3f s\n", warm.from_cache ? "hit" : "MISS", warm_s);

  opts.path = (dir / "alpaca.jsonl").string();
  opts.template_kind = sftgo::data::TemplateKind::kLlama3;
  opts.cache_dir.clear();
  t.reset();
  auto streamed = sftgo::data::prepare_dataset(opts, tok);
  std::printf("cold (JSONL streamed, llama3 template, no cache): %.2f s\n", t.seconds());
  fs::remove_all(dir);
  return warm.from_cache && streamed.stats.examples == s.examples ? 0 : 1;
}
