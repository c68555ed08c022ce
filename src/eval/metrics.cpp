// lm_eval's multiple-choice process_results and mean/stderr aggregation.
#include "sftgo/eval/metrics.h"

#include <cmath>
#include <limits>

#include "sftgo/core/error.h"

namespace sftgo::eval {

namespace {
// numpy argmax: the first maximum wins.
size_t argmax(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}
}  // namespace

std::map<std::string, double> doc_metrics(const TaskInfo& task, const Doc& doc, const std::vector<double>& ll) {
  SFTGO_CHECK(ll.size() == doc.choices.size(), ErrorKind::kInternal, doc.source, ": ", ll.size(),
              " log-likelihoods for ", doc.choices.size(), " choices");
  std::map<std::string, double> m;
  if (task.kind == TaskKind::kTruthfulQaMc2) {
    // process_results_mc2: probabilities exp(ll) normalised over the choices, mass on true answers.
    double total = 0.0, truth = 0.0;
    for (size_t i = 0; i < ll.size(); ++i) {
      const double p = std::exp(ll[i]);
      total += p;
      if (doc.labels[i] == 1) truth += p;
    }
    m["acc"] = truth / total;
    return m;
  }
  std::vector<double> by_chars(ll.size()), by_bytes(ll.size());
  for (size_t i = 0; i < ll.size(); ++i) {
    by_chars[i] = ll[i] / static_cast<double>(utf8_length(doc.choices[i]));
    by_bytes[i] = ll[i] / static_cast<double>(doc.choices[i].size());
  }
  const auto gold = static_cast<size_t>(doc.gold);
  m["acc"] = argmax(ll) == gold ? 1.0 : 0.0;
  m["acc_norm"] = argmax(by_chars) == gold ? 1.0 : 0.0;
  m["acc_bytes"] = argmax(by_bytes) == gold ? 1.0 : 0.0;
  return m;
}

MetricValue mean_with_stderr(const std::vector<double>& v) {
  MetricValue r;
  if (v.empty()) {
    r.value = r.stderr_ = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  double sum = 0.0;
  for (double x : v) sum += x;
  const double n = static_cast<double>(v.size());
  r.value = sum / n;
  if (v.size() < 2) {
    r.stderr_ = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  double ss = 0.0;
  for (double x : v) ss += (x - r.value) * (x - r.value);
  r.stderr_ = std::sqrt(ss / (n - 1.0)) / std::sqrt(n);
  return r;
}

double pooled_stderr(const std::vector<double>& stderrs, const std::vector<int64_t>& sizes) {
  SFTGO_CHECK(stderrs.size() == sizes.size() && !sizes.empty(), ErrorKind::kInternal, "pooled_stderr: bad sizes");
  double num = 0.0, total = 0.0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const double n = static_cast<double>(sizes[i]);
    num += (n - 1.0) * stderrs[i] * stderrs[i] * n;
    total += n;
  }
  const double var = num / (total - static_cast<double>(sizes.size()));
  return std::sqrt(var / total);
}

}  // namespace sftgo::eval
