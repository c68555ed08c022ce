// Per-document scores and their aggregation, as lm_eval computes them (no LibTorch).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sftgo/eval/tasks.h"

namespace sftgo::eval {

// Per-document metric values from the choices' log-likelihoods (one per choice):
//   acc      argmax(ll) == gold
//   acc_norm argmax(ll / len(choice)) == gold, len in code points (Python len(str), as lm_eval's
//            process_results; lm_eval's byte-normalised variant is acc_bytes, also reported)
//   truthfulqa_mc2 "acc": sum of exp(ll) over true answers / sum over all answers.
std::map<std::string, double> doc_metrics(const TaskInfo& task, const Doc& doc, const std::vector<double>& loglik);

struct MetricValue {
  double value = 0.0;
  double stderr_ = 0.0;  // NaN when undefined (fewer than 2 documents)
};

// mean and sample standard error of the mean (sqrt(sum (x-mu)^2 / (n-1)) / sqrt(n)), lm_eval's
// mean / mean_stderr.
MetricValue mean_with_stderr(const std::vector<double>& values);
// lm_eval's pooled_sample_stderr for a group weighted by size.
double pooled_stderr(const std::vector<double>& stderrs, const std::vector<int64_t>& sizes);

}  // namespace sftgo::eval
