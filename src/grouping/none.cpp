// `none`: no important tokens (every trained token in group 0); the plain-CE control.
#include "builtin.h"

namespace sftgo::grouping::detail {
namespace {

class NoneFunction final : public StaticGroupingFunction {
 public:
  std::string name() const override { return "none"; }
  Requirements requirements() const override { return {}; }
  std::string params() const override { return ""; }
  std::vector<float> score(const data::TokenizedExample& ex) const override {
    return std::vector<float>(ex.ids.size(), 0.0f);
  }
  std::vector<uint8_t> groups(const data::TokenizedExample& ex, std::span<const float>, double) const override {
    return std::vector<uint8_t>(ex.ids.size(), kGroupOther);
  }
};

}  // namespace

GroupingFunctionSpec none_function() {
  return {"none", {}, [](const GroupingOptions&, const Tokenizer*) { return std::make_unique<NoneFunction>(); }};
}

}  // namespace sftgo::grouping::detail
