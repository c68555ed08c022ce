// `frequency`: rarer tokens are more important. score = -ln(count(id) / N) over the trained tokens of
// the fitted corpus; an id never seen in fit() scores -ln(1 / (N + 1)), above every seen id.
#include <cmath>

#include "builtin.h"
#include "sftgo/core/error.h"

namespace sftgo::grouping::detail {
namespace {

class FrequencyFunction final : public StaticGroupingFunction {
 public:
  std::string name() const override { return "frequency"; }
  Requirements requirements() const override { return {.corpus_statistics = true}; }
  std::string params() const override { return ""; }

  void fit(const std::vector<data::TokenizedExample>& corpus) override {
    std::vector<int64_t> counts;
    int64_t total = 0;
    for (const auto& ex : corpus) {
      for (size_t t = 0; t < ex.ids.size(); ++t) {
        if (ex.labels[t] == data::kIgnoreLabel) continue;
        const int32_t id = ex.ids[t];
        SFTGO_CHECK(id >= 0, ErrorKind::kData, "negative token id ", id, " in example ", ex.index);
        if (static_cast<size_t>(id) >= counts.size()) counts.resize(static_cast<size_t>(id) + 1, 0);
        ++counts[static_cast<size_t>(id)];
        ++total;
      }
    }
    const double n = static_cast<double>(total);
    score_.assign(counts.size(), 0.0f);
    for (size_t i = 0; i < counts.size(); ++i)
      score_[i] = static_cast<float>(counts[i] > 0 ? -std::log(static_cast<double>(counts[i]) / n) : std::log(n + 1.0));
    unseen_ = static_cast<float>(std::log(n + 1.0));
    fitted_ = true;
  }

  std::vector<float> score(const data::TokenizedExample& ex) const override {
    SFTGO_CHECK(fitted_, ErrorKind::kInternal, "frequency: score() before fit()");
    std::vector<float> s(ex.ids.size(), 0.0f);
    for (size_t t = 0; t < s.size(); ++t) {
      if (ex.labels[t] == data::kIgnoreLabel) continue;
      const auto id = static_cast<size_t>(ex.ids[t]);
      s[t] = id < score_.size() ? score_[id] : unseen_;
    }
    return s;
  }

 private:
  std::vector<float> score_;
  float unseen_ = 0;
  bool fitted_ = false;
};

}  // namespace

GroupingFunctionSpec frequency_function() {
  return {"frequency", {}, [](const GroupingOptions&, const Tokenizer*) { return std::make_unique<FrequencyFunction>(); }};
}

}  // namespace sftgo::grouping::detail
