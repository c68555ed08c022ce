// `tfidf`: scikit-learn TfidfVectorizer semantics over token ids (see tfidf.h for the variant).
#include "sftgo/grouping/tfidf.h"

#include <algorithm>
#include <cmath>

#include "builtin.h"
#include "sftgo/core/error.h"

namespace sftgo::grouping {

void TfidfModel::fit(const std::vector<std::span<const int32_t>>& docs) {
  int32_t max_id = -1;
  for (const auto& d : docs)
    for (int32_t id : d) {
      SFTGO_CHECK(id >= 0, ErrorKind::kData, "tfidf: negative term id ", id);
      max_id = std::max(max_id, id);
    }
  // Document frequency with a "last document seen" stamp: O(tokens), no sorting.
  std::vector<int64_t> df(static_cast<size_t>(max_id + 1), 0);
  std::vector<int64_t> stamp(df.size(), -1);
  for (size_t d = 0; d < docs.size(); ++d)
    for (int32_t id : docs[d]) {
      if (stamp[static_cast<size_t>(id)] == static_cast<int64_t>(d)) continue;
      stamp[static_cast<size_t>(id)] = static_cast<int64_t>(d);
      ++df[static_cast<size_t>(id)];
    }
  n_docs_ = static_cast<int64_t>(docs.size());
  const double n = static_cast<double>(n_docs_);
  auto idf_of = [&](double dfv) {
    return params_.smooth_idf ? std::log((1.0 + n) / (1.0 + dfv)) + 1.0 : std::log(n / dfv) + 1.0;
  };
  unseen_idf_ = params_.smooth_idf ? idf_of(0.0) : (n > 0 ? idf_of(1.0) : 1.0);
  idf_.assign(df.size(), unseen_idf_);
  for (size_t i = 0; i < df.size(); ++i)
    if (df[i] > 0) idf_[i] = idf_of(static_cast<double>(df[i]));
}

double TfidfModel::idf(int32_t term) const {
  return term >= 0 && static_cast<size_t>(term) < idf_.size() ? idf_[static_cast<size_t>(term)] : unseen_idf_;
}

std::vector<std::pair<int32_t, double>> TfidfModel::document_weights(std::span<const int32_t> doc) const {
  std::vector<int32_t> sorted(doc.begin(), doc.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::pair<int32_t, double>> w;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    const double tf = static_cast<double>(j - i);
    w.emplace_back(sorted[i], (params_.sublinear_tf ? 1.0 + std::log(tf) : tf) * idf(sorted[i]));
    i = j;
  }
  if (params_.l2_norm) {
    double sq = 0;
    for (const auto& [t, v] : w) sq += v * v;
    if (sq > 0) {
      const double norm = std::sqrt(sq);
      for (auto& [t, v] : w) v /= norm;
    }
  }
  return w;
}

std::vector<double> TfidfModel::token_weights(std::span<const int32_t> doc) const {
  const auto w = document_weights(doc);
  std::vector<double> out(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    auto it = std::lower_bound(w.begin(), w.end(), doc[i], [](const auto& p, int32_t t) { return p.first < t; });
    out[i] = it->second;
  }
  return out;
}

namespace detail {
namespace {

// The trained token ids of an example, in order (multi-turn responses are concatenated).
std::vector<int32_t> trained_ids(const data::TokenizedExample& ex) {
  std::vector<int32_t> ids;
  ids.reserve(ex.ids.size());
  for (size_t t = 0; t < ex.ids.size(); ++t)
    if (ex.labels[t] != data::kIgnoreLabel) ids.push_back(ex.ids[t]);
  return ids;
}

class TfidfFunction final : public StaticGroupingFunction {
 public:
  explicit TfidfFunction(TfidfParams p) : model_(p) {}
  std::string name() const override { return "tfidf"; }
  Requirements requirements() const override { return {.corpus_statistics = true}; }
  std::string params() const override {
    const auto& p = model_.params();
    return "smooth_idf=" + std::to_string(p.smooth_idf) + ";sublinear_tf=" + std::to_string(p.sublinear_tf) +
           ";l2_norm=" + std::to_string(p.l2_norm);
  }
  void fit(const std::vector<data::TokenizedExample>& corpus) override {
    std::vector<std::vector<int32_t>> docs;
    docs.reserve(corpus.size());
    for (const auto& ex : corpus) docs.push_back(trained_ids(ex));
    std::vector<std::span<const int32_t>> spans(docs.begin(), docs.end());
    model_.fit(spans);
    fitted_ = true;
  }
  std::vector<float> score(const data::TokenizedExample& ex) const override {
    SFTGO_CHECK(fitted_, ErrorKind::kInternal, "tfidf: score() before fit()");
    const auto doc = trained_ids(ex);
    const auto w = model_.token_weights(doc);
    std::vector<float> s(ex.ids.size(), 0.0f);
    size_t j = 0;
    for (size_t t = 0; t < s.size(); ++t)
      if (ex.labels[t] != data::kIgnoreLabel) s[t] = static_cast<float>(w[j++]);
    return s;
  }

 private:
  TfidfModel model_;
  bool fitted_ = false;
};

}  // namespace

// grouping.tfidf_*: scikit-learn's TfidfVectorizer switches. All three are in params(), so the cache
// key of a run that sets none of them is the one it always was.
GroupingFunctionSpec tfidf_function() {
  std::vector<OptionSpec> options = {
      {"tfidf_sublinear_tf", false, "TF-IDF: use 1 + log(tf) as scikit-learn's sublinear_tf"},
      {"tfidf_smooth_idf", true, "TF-IDF: idf = ln((1+n)/(1+df)) + 1 as scikit-learn's smooth_idf"},
      {"tfidf_l2_norm", true,
       "TF-IDF: l2-normalise each response's tf-idf vector as scikit-learn's norm='l2' (false: norm=None)"},
  };
  return {"tfidf", std::move(options), [](const GroupingOptions& opts, const Tokenizer*) {
            const auto& p = opts.params;
            return std::make_unique<TfidfFunction>(TfidfParams{.smooth_idf = p.get<bool>("tfidf_smooth_idf"),
                                                               .sublinear_tf = p.get<bool>("tfidf_sublinear_tf"),
                                                               .l2_norm = p.get<bool>("tfidf_l2_norm")});
          }};
}

}  // namespace detail
}  // namespace sftgo::grouping
