// The shared top-k% selection with the deterministic tie rule (see grouping.h).
#include <algorithm>
#include <cmath>

#include "sftgo/core/error.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo::grouping {
namespace {

struct Candidate {
  float score;
  int64_t order;  // position (sequence) or flattened position (batch): earlier wins ties
};

// Strict total order: "a ranks before b". NaN ranks after every number.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a.score != b.score) return a.score > b.score;
  return a.order < b.order;
}

void check_k(double k_percent) {
  SFTGO_CHECK(k_percent >= 0.0 && k_percent <= 100.0, ErrorKind::kConfig,
              "grouping.top_k_percent must be in [0, 100], got ", k_percent);
}

// Keeps the first m of `cands` by ranks_before (unordered), m <= size.
void keep_top(std::vector<Candidate>& cands, int64_t m) {
  if (m < static_cast<int64_t>(cands.size()) && m > 0)
    std::nth_element(cands.begin(), cands.begin() + (m - 1), cands.end(), ranks_before);
  cands.resize(static_cast<size_t>(m));
}

}  // namespace

std::vector<uint8_t> trained_mask(const data::TokenizedExample& ex) {
  std::vector<uint8_t> m(ex.labels.size());
  for (size_t t = 0; t < m.size(); ++t) m[t] = ex.labels[t] != data::kIgnoreLabel;
  return m;
}

int64_t num_important(int64_t n_trained, double k_percent) {
  check_k(k_percent);
  if (n_trained <= 0) return 0;
  const double exact = k_percent / 100.0 * static_cast<double>(n_trained);
  auto m = static_cast<int64_t>(std::ceil(exact - 1e-9));
  return std::clamp<int64_t>(m, 0, n_trained);
}

std::vector<uint8_t> select_top_k(std::span<const float> scores, std::span<const uint8_t> trained_mask,
                                  double k_percent) {
  SFTGO_CHECK(scores.size() == trained_mask.size(), ErrorKind::kInternal, "select_top_k: ", scores.size(),
              " scores for ", trained_mask.size(), " mask entries");
  std::vector<uint8_t> out(scores.size(), kGroupOther);
  std::vector<Candidate> cands;
  cands.reserve(scores.size());
  for (size_t t = 0; t < scores.size(); ++t)
    if (trained_mask[t]) cands.push_back({scores[t], static_cast<int64_t>(t)});
  keep_top(cands, num_important(static_cast<int64_t>(cands.size()), k_percent));
  for (const auto& c : cands) out[static_cast<size_t>(c.order)] = kGroupImportant;
  return out;
}

std::vector<std::vector<uint8_t>> select_top_k_batch(const std::vector<std::span<const float>>& scores,
                                                     const std::vector<std::span<const uint8_t>>& trained,
                                                     double k_percent) {
  SFTGO_CHECK(scores.size() == trained.size(), ErrorKind::kInternal, "select_top_k_batch: ", scores.size(),
              " score rows for ", trained.size(), " mask rows");
  std::vector<int64_t> offsets(scores.size() + 1, 0);
  for (size_t b = 0; b < scores.size(); ++b) {
    SFTGO_CHECK(scores[b].size() == trained[b].size(), ErrorKind::kInternal, "select_top_k_batch: row ", b, " has ",
                scores[b].size(), " scores for ", trained[b].size(), " mask entries");
    offsets[b + 1] = offsets[b] + static_cast<int64_t>(scores[b].size());
  }
  std::vector<Candidate> cands;
  cands.reserve(static_cast<size_t>(offsets.back()));
  for (size_t b = 0; b < scores.size(); ++b)
    for (size_t t = 0; t < scores[b].size(); ++t)
      if (trained[b][t]) cands.push_back({scores[b][t], offsets[b] + static_cast<int64_t>(t)});
  keep_top(cands, num_important(static_cast<int64_t>(cands.size()), k_percent));
  std::vector<std::vector<uint8_t>> out(scores.size());
  for (size_t b = 0; b < scores.size(); ++b) out[b].assign(scores[b].size(), kGroupOther);
  for (const auto& c : cands) {
    // Flattened order -> (row, column): offsets is sorted, so the row is the last offset <= order.
    auto row = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), c.order) - offsets.begin() - 1);
    out[row][static_cast<size_t>(c.order - offsets[row])] = kGroupImportant;
  }
  return out;
}

std::vector<uint8_t> StaticGroupingFunction::groups(const data::TokenizedExample& ex, std::span<const float> scores,
                                                    double k_percent) const {
  return select_top_k(scores, trained_mask(ex), k_percent);
}

GroupingFunction::~GroupingFunction() = default;

StaticGroupingFunction& as_static(GroupingFunction& fn, const std::string& what) {
  auto* s = dynamic_cast<StaticGroupingFunction*>(&fn);
  SFTGO_CHECK_HINT(s != nullptr && fn.is_static(), ErrorKind::kConfig,
                   "its groups are chosen at every step from the training model's losses, inside the trainer",
                   "grouping function '", fn.name(), "' cannot be used for ", what);
  return *s;
}

}  // namespace sftgo::grouping
