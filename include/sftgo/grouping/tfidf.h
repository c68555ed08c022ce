// TF-IDF over token ids, matching scikit-learn's TfidfVectorizer (norm="l2" or None, smooth_idf,
// sublinear_tf). Documents are the trained (response) tokens of each example; terms are token ids.
// A token's score is the tf-idf weight of its term in its own document (so repeated tokens share a
// score). Terms never seen in fit() get the idf of df = 0 (smooth) or df = 1 (non-smooth) instead of
// being dropped as sklearn does; this only matters for documents outside the fitted corpus.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace sftgo::grouping {

struct TfidfParams {
  bool smooth_idf = true;
  bool sublinear_tf = false;
  bool l2_norm = true;
};

class TfidfModel {
 public:
  explicit TfidfModel(TfidfParams params = {}) : params_(params) {}
  // Document frequencies over `docs` (each a list of term ids >= 0).
  void fit(const std::vector<std::span<const int32_t>>& docs);
  int64_t num_documents() const { return n_docs_; }
  double idf(int32_t term) const;
  // (term, weight) of one document, sorted by term id.
  std::vector<std::pair<int32_t, double>> document_weights(std::span<const int32_t> doc) const;
  // Per-position weight of each term occurrence in `doc` (same length as doc).
  std::vector<double> token_weights(std::span<const int32_t> doc) const;
  const TfidfParams& params() const { return params_; }

 private:
  TfidfParams params_;
  int64_t n_docs_ = 0;
  std::vector<double> idf_;  // indexed by term id; terms beyond the end were never seen
  double unseen_idf_ = 1.0;
};

}  // namespace sftgo::grouping
