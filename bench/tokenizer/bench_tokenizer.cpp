// Tokenizer load time and single-thread encode throughput on a JSONL corpus ({"text": ...} lines).
//   bench_tokenizer --tokenizer DIR --corpus FILE.jsonl [--out IDS.jsonl] [--repeat N]
// Prints one JSON line: load_ms, bytes, texts, tokens, encode_s (best of N), mb_per_s.
// --out writes {"ids": [...]} per text so a script can compare with HF.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  std::string tok_path, corpus, out_path;
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokenizer"))
      tok_path = argv[i + 1];
    else if (!std::strcmp(argv[i], "--corpus"))
      corpus = argv[i + 1];
    else if (!std::strcmp(argv[i], "--out"))
      out_path = argv[i + 1];
    else if (!std::strcmp(argv[i], "--repeat"))
      repeat = std::max(1, std::atoi(argv[i + 1]));
  }
  if (tok_path.empty() || corpus.empty()) {
    std::cerr << "usage: bench_tokenizer --tokenizer DIR --corpus FILE.jsonl [--out IDS.jsonl] [--repeat N]\n";
    return 2;
  }
  try {
    std::vector<std::string> texts;
    size_t bytes = 0;
    {
      std::ifstream f(corpus);
      if (!f) throw std::runtime_error("cannot open " + corpus);
      std::string line;
      while (std::getline(f, line)) {
        texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
        bytes += texts.back().size();
      }
    }
    auto t0 = std::chrono::steady_clock::now();
    const sftgo::Tokenizer tok = sftgo::Tokenizer::load(tok_path);
    const double load_s = seconds_since(t0);

    std::vector<std::vector<sftgo::TokenId>> ids(texts.size());
    double best = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < repeat; ++r) {
      // A fresh tokenizer per round would be fairer to the cache; HF keeps its cache across calls too.
      auto t1 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < texts.size(); ++i) ids[i] = tok.encode(texts[i]);
      best = std::min(best, seconds_since(t1));
    }
    for (const auto& v : ids) tokens += v.size();
    if (!out_path.empty()) {
      std::ofstream out(out_path);
      std::string buf;
      for (const auto& v : ids) {
        buf = "{\"ids\":[";
        for (size_t i = 0; i < v.size(); ++i) {
          if (i) buf += ',';
          buf += std::to_string(v[i]);
        }
        buf += "]}\n";
        out << buf;
      }
    }
    std::cout << "{\"load_ms\": " << load_s * 1000 << ", \"bytes\": " << bytes << ", \"texts\": " << texts.size()
              << ", \"tokens\": " << tokens << ", \"encode_s\": " << best << ", \"mb_per_s\": " << bytes / best / 1e6
              << "}\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
