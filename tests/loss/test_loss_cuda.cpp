// The fused loss on CUDA tensors (row kernels in src/kernels) against the CPU reference. Always
// compiled; every test skips when no GPU is visible.
#include <gtest/gtest.h>

#include <cstdio>

#include "sftgo/core/error.h"
#include "test_common.h"

namespace sftgo::loss {
namespace {

using testing::make_inputs;
using testing::rel_error;
using testing::run_loss;

#define SKIP_WITHOUT_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

void gpu_parity(const char* name, int64_t t, int64_t h, int64_t v, at::ScalarType dtype, Objective obj, int64_t chunk,
                double tol, uint64_t seed) {
  const auto cpu = make_inputs(t, h, v, seed, 0.25, 0.4, dtype, at::kCPU);
  const auto gpu = make_inputs(t, h, v, seed, 0.25, 0.4, dtype, at::Device(at::kCUDA, 0));
  FusedLossOptions o;
  o.objective = obj;
  o.lambda = 0.6;
  o.chunk_vocab = chunk;
  const auto ref = run_loss(testing::reference_f64, cpu, o);
  const auto fused = run_loss(fused_group_loss, gpu, o);
  const double el = rel_error(fused.loss, ref.loss);
  const double eh = rel_error(fused.grad_hidden, ref.grad_hidden);
  const double ew = rel_error(fused.grad_weight, ref.grad_weight);
  std::printf("[gpu parity] %-24s rel(loss)=%.2e rel(dh)=%.2e rel(dW)=%.2e\n", name, el, eh, ew);
  EXPECT_LE(el, tol);
  EXPECT_LE(eh, tol);
  EXPECT_LE(ew, tol);
  EXPECT_EQ(fused.info.weights.worst, ref.info.weights.worst);
}

// fp32 on GPU: cuBLAS (TF32 off by default) and the block-reduction order differ from the CPU
// reference in rounding only; 1e-4 allows for the GPU's different GEMM blocking over H.
TEST(LossCuda, Fp32Parity) {
  SKIP_WITHOUT_GPU();
  gpu_parity("sftgo V=7", 13, 8, 7, at::kFloat, Objective::kSftGo, 3, 1e-4, 1);
  gpu_parity("rho1 V=1000", 37, 64, 1000, at::kFloat, Objective::kRho1, 128, 1e-4, 2);
  gpu_parity("ce V=128256", 33, 64, 128256, at::kFloat, Objective::kCe, 10000, 1e-4, 3);
  gpu_parity("sftgo V=128256", 64, 128, 128256, at::kFloat, Objective::kSftGo, 0, 1e-4, 4);
}

// bf16: block logits and gradients stored in bf16 (see the CPU bf16 test for the bound).
TEST(LossCuda, Bf16Parity) {
  SKIP_WITHOUT_GPU();
  gpu_parity("sftgo bf16 V=128256", 64, 128, 128256, at::kBFloat16, Objective::kSftGo, 16384, 3e-2, 5);
}

TEST(LossCuda, AllIgnoredAndNumericCheck) {
  SKIP_WITHOUT_GPU();
  auto in = make_inputs(16, 32, 1000, 7, 0.0, 0.5, at::kFloat, at::Device(at::kCUDA, 0));
  in.hidden[2][3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(fused_group_loss(in.hidden, in.weight, in.labels, in.groups, FusedLossOptions{}), sftgo::Error);
  in.labels.fill_(-100);
  const auto r = run_loss(fused_group_loss, in, FusedLossOptions{});
  EXPECT_EQ(r.loss, 0.0);
  EXPECT_EQ(r.grad_weight.abs().max().item<float>(), 0.0f);
}

}  // namespace
}  // namespace sftgo::loss
