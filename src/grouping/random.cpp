// `random`: seeded uniform scores, the control that picks k% of the tokens at random. The score of a
// token depends only on (seed, example index, position), not on thread scheduling or data order.
#include "builtin.h"
#include "sftgo/grouping/cache.h"

namespace sftgo::grouping::detail {
namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class RandomFunction final : public StaticGroupingFunction {
 public:
  explicit RandomFunction(uint64_t seed) : seed_(seed) {}
  std::string name() const override { return "random"; }
  Requirements requirements() const override { return {}; }
  std::string params() const override { return "seed=" + std::to_string(seed_); }
  std::vector<float> score(const data::TokenizedExample& ex) const override {
    // Examples without a dataset index are identified by their content instead.
    const uint64_t id =
        ex.index >= 0 ? static_cast<uint64_t>(ex.index) : hash64(ex.ids.data(), ex.ids.size() * sizeof(int32_t));
    const uint64_t base = splitmix64(splitmix64(seed_) ^ id);
    std::vector<float> s(ex.ids.size(), 0.0f);
    for (size_t t = 0; t < s.size(); ++t) {
      if (ex.labels[t] == data::kIgnoreLabel) continue;
      // 24 random bits -> exactly representable float in [0, 1).
      s[t] = static_cast<float>(splitmix64(base + t) >> 40) * (1.0f / 16777216.0f);
    }
    return s;
  }

 private:
  uint64_t seed_;
};

}  // namespace

// Seeded by run.seed (GroupingOptions::seed); no options of its own.
GroupingFunctionSpec random_function() {
  return {"random", {}, [](const GroupingOptions& opts, const Tokenizer*) {
            return std::make_unique<RandomFunction>(opts.seed);
          }};
}

}  // namespace sftgo::grouping::detail
