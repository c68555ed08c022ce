// Times compute_groups on 52,000 synthetic examples (Stanford Alpaca's size) of ~200 tokens
// (a ~60-token untrained prompt, the rest trained; Zipf-distributed ids over the Llama-3 vocabulary):
// every static function cold, then tfidf warm from the on-disk cache.
// Usage: bench_grouping [num examples] [threads]   (defaults: 52000, all cores)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

#include "sftgo/core/log.h"
#include "sftgo/grouping/grouping.h"

int main(int argc, char** argv) {
  using namespace sftgo;
  init_logging(0, 1, LogLevel::kWarn);
  const int64_t n = argc > 1 ? std::stoll(argv[1]) : 52000;
  const int threads = argc > 2 ? std::stoi(argv[2]) : 0;

  std::mt19937_64 rng(1234);
  // Zipf(1.1) over 128,000 ids via a precomputed CDF.
  constexpr int kVocab = 128000;
  std::vector<double> cdf(kVocab);
  double acc = 0;
  for (int i = 0; i < kVocab; ++i) cdf[i] = acc += 1.0 / std::pow(i + 1.0, 1.1);
  std::uniform_real_distribution<double> u(0, acc);
  std::uniform_int_distribution<int> len(120, 280), prompt(30, 90);
  std::vector<data::TokenizedExample> examples(static_cast<size_t>(n));
  int64_t tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto& ex = examples[static_cast<size_t>(i)];
    const int l = len(rng), p = prompt(rng);
    for (int t = 0; t < l; ++t) {
      const auto id = static_cast<int32_t>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
      ex.ids.push_back(id);
      ex.labels.push_back(t < p ? data::kIgnoreLabel : id);
    }
    ex.index = i;
    tokens += l;
  }
  std::printf("%lld examples, %lld tokens, %d threads\n", static_cast<long long>(n), static_cast<long long>(tokens),
              threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));

  const std::string cache_dir = "/tmp/sftgo_bench_grouping_" + std::to_string(::getpid());
  for (const char* fn : {"none", "random", "frequency", "tfidf", "tfidf"}) {
    grouping::GroupingOptions opts;
    opts.function = fn;
    opts.num_threads = threads;
    opts.dataset_fingerprint = "bench";
    if (std::string(fn) == "tfidf") opts.cache_dir = cache_dir;  // second tfidf run loads the cache
    auto t0 = std::chrono::steady_clock::now();
    auto out = grouping::compute_groups(examples, opts);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto share = grouping::group_share(examples, out.groups);
    std::printf("%-10s %-6s %7.3f s  (%5.1f M tok/s)  important share %.4f\n", fn, out.from_cache ? "cache" : "cold", s,
                tokens / s / 1e6, share.overall);
    if (out.from_cache) std::remove(out.cache_path.c_str());
  }
  ::rmdir(cache_dir.c_str());
  return 0;
}
