// Test tool for the LLMLingua-2 parity test (tests/python/test_grouping_llmlingua2.py): reads one
// {"text": ...} per line and prints one JSON object per line:
//   {"ids": XLM-R ids of the whole text, "words": [...], "probs": [...], "spans": [[begin, end], ...]}
// Usage: sftgo_llmlingua2_tool EXPORT_DIR FILE [--window N] [--batch N] [--device D] [--time 1]
// --time 1: prints {"seconds": scoring time, "pieces": XLM-R pieces} to stderr (bench/grouping).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"
#include "sftgo/grouping/llmlingua2.h"
#include "sftgo/grouping/llmlingua2_torch.h"

int main(int argc, char** argv) {
  using namespace sftgo;
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s EXPORT_DIR FILE [--window N] [--batch N] [--device D]\n", argv[0]);
    return 2;
  }
  grouping::Llmlingua2Options opts;
  opts.model = argv[1];
  opts.device = "cpu";
  bool timing = false;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--time")
      timing = v == "1";
    else if (k == "--window")
      opts.window = std::stoll(v);
    else if (k == "--batch")
      opts.batch_size = std::stoll(v);
    else if (k == "--device")
      opts.device = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    grouping::Llmlingua2Scorer scorer(opts, grouping::lazy_llmlingua2_classifier(opts));
    std::ifstream in(argv[2]);
    std::vector<std::string> texts;
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    const auto start = std::chrono::steady_clock::now();
    const auto words = scorer.words(texts);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t pieces = 0;
    for (size_t t = 0; t < texts.size(); ++t) {
      nlohmann::json j;
      std::vector<int64_t> ids;
      for (const auto& p : scorer.tokenizer().encode(texts[t])) ids.push_back(p.id);
      pieces += ids.size();
      j["ids"] = ids;
      j["words"] = nlohmann::json::array();
      j["probs"] = nlohmann::json::array();
      j["spans"] = nlohmann::json::array();
      for (const auto& w : words[t]) {
        j["words"].push_back(w.text);
        j["probs"].push_back(w.prob);
        j["spans"].push_back({w.begin, w.end});
      }
      std::cout << j.dump() << "\n";
    }
    if (timing) std::fprintf(stderr, "{\"seconds\": %.6f, \"pieces\": %zu}\n", seconds, pieces);
  } catch (const sftgo::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
