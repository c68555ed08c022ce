// The tensor front end of the Rho-1 selection.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sftgo/core/error.h"
#include "sftgo/grouping/rho1_torch.h"

namespace sftgo::grouping {
namespace {

TEST(Rho1Torch, MatchesVectorVersion) {
  torch::manual_seed(0);
  auto cur = torch::rand({3, 17});                       // [B, S]
  auto ref = torch::rand({3, 17}).to(torch::kBFloat16);  // [B, S], another dtype on purpose
  auto tr = torch::rand({3, 17}) > 0.3;                  // [B, S] bool
  for (auto sel : {Selection::kSequence, Selection::kBatch}) {
    auto got = select_rho1(cur, ref, tr, 30, sel);
    ASSERT_EQ(got.sizes(), cur.sizes());
    ASSERT_EQ(got.scalar_type(), torch::kUInt8);
    auto ref32 = ref.to(torch::kFloat32).contiguous();
    auto tr8 = tr.to(torch::kUInt8).contiguous();
    auto want = select_rho1(std::span<const float>(cur.data_ptr<float>(), 51),
                            std::span<const float>(ref32.data_ptr<float>(), 51),
                            std::span<const uint8_t>(tr8.data_ptr<uint8_t>(), 51), 3, 17, 30, sel);
    auto g = got.contiguous();
    EXPECT_EQ(std::vector<uint8_t>(g.data_ptr<uint8_t>(), g.data_ptr<uint8_t>() + 51), want);
    // Never selects an untrained token.
    EXPECT_EQ((got.to(torch::kBool) & tr.logical_not()).sum().item<int64_t>(), 0);
  }
  EXPECT_THROW(select_rho1(cur, ref.narrow(1, 0, 5), tr, 30, Selection::kBatch), Error);
}

}  // namespace
}  // namespace sftgo::grouping
