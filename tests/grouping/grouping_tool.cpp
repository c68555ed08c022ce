// Test tool: reads documents (one JSON array of token ids per line, all trained), runs a grouping
// function over them and prints one JSON object per document:
//   {"terms": [...], "weights": [...]}  (tfidf only: sorted term ids and their tf-idf weights)
//   "scores": per-position scores, "mask": per-position groups.
// Usage: sftgo_grouping_tool FILE [--function tfidf] [--k 30] [--smooth 0|1] [--sublinear 0|1] [--norm 0|1]
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/tfidf.h"

int main(int argc, char** argv) {
  using namespace sftgo;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [--function F] [--k K] [--smooth 0|1] [--sublinear 0|1] [--norm 0|1]\n",
                 argv[0]);
    return 2;
  }
  grouping::GroupingOptions opts;
  opts.function = "tfidf";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--function")
      opts.function = v;
    else if (k == "--k")
      opts.top_k_percent = std::stod(v);
    else if (k == "--smooth")
      opts.params.set("tfidf_smooth_idf", v == "1");
    else if (k == "--sublinear")
      opts.params.set("tfidf_sublinear_tf", v == "1");
    else if (k == "--norm")
      opts.params.set("tfidf_l2_norm", v == "1");
    else if (k == "--seed")
      opts.seed = std::stoull(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    std::ifstream in(argv[1]);
    std::vector<data::TokenizedExample> examples;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      data::TokenizedExample ex;
      ex.ids = nlohmann::json::parse(line).get<std::vector<int32_t>>();
      ex.labels = ex.ids;
      ex.index = static_cast<int64_t>(examples.size());
      examples.push_back(std::move(ex));
    }
    auto out = grouping::compute_groups(examples, opts);
    auto flag = [&](const char* key, bool def) { return opts.params.has(key) ? opts.params.get<bool>(key) : def; };
    grouping::TfidfModel model({.smooth_idf = flag("tfidf_smooth_idf", true),
                                .sublinear_tf = flag("tfidf_sublinear_tf", false),
                                .l2_norm = flag("tfidf_l2_norm", true)});
    if (opts.function == "tfidf") {
      std::vector<std::span<const int32_t>> docs;
      for (const auto& ex : examples) docs.emplace_back(ex.ids);
      model.fit(docs);
    }
    for (size_t i = 0; i < examples.size(); ++i) {
      nlohmann::json j;
      if (opts.function == "tfidf") {
        std::vector<int32_t> terms;
        std::vector<double> weights;
        for (const auto& [t, w] : model.document_weights(examples[i].ids)) {
          terms.push_back(t);
          weights.push_back(w);
        }
        j["terms"] = terms;
        j["weights"] = weights;
      }
      j["scores"] = out.scores[i];
      j["mask"] = out.groups[i];
      std::cout << j.dump() << "\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
