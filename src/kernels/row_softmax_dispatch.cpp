// CPU / CUDA dispatch of the fused loss's row kernels (sftgo/kernels/row_softmax_dispatch.h). The CPU
// loops apply the shared row maths of sftgo/kernels/row_softmax.h; CUDA tensors go to the kernels of
// row_softmax.cu when this build has them (SFTGO_HAVE_CUDA_KERNELS) and are refused otherwise.
#include "sftgo/kernels/row_softmax_dispatch.h"

#include <cmath>

#include <ATen/Parallel.h>

#include "sftgo/core/error.h"
#include "sftgo/kernels/row_softmax.h"

#ifdef SFTGO_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "sftgo/kernels/fused_ce_cuda.h"
#endif

namespace sftgo::kernels {
namespace {

template <typename Scalar>
void cpu_softmax_block(const at::Tensor& logits, int64_t col0, const int64_t* labels, RowState& st, float* lse,
                       float* loss) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  const Scalar* base = logits.const_data_ptr<Scalar>();
  float* smax = st.max.mutable_data_ptr<float>();
  float* ssum = st.sum.mutable_data_ptr<float>();
  float* label_logit = st.label_logit.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Scalar* row = base + r * cols;
      const SoftmaxState merged = softmax_state_merge(SoftmaxState{smax[r], ssum[r]}, row_softmax_state(row, 0, cols));
      smax[r] = merged.max;
      ssum[r] = merged.sum;
      const int64_t local = labels[r] - col0;
      if (local >= 0 && local < cols) label_logit[r] = static_cast<float>(row[local]);
      if (lse != nullptr) {
        lse[r] = softmax_state_lse(merged);
        loss[r] = cross_entropy_from_lse(lse[r], label_logit[r]);
      }
    }
  });
}

template <typename Scalar>
void cpu_ce_grad(at::Tensor& logits, int64_t col0, const int64_t* labels, const float* lse, const float* scale) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  Scalar* base = logits.mutable_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      row_cross_entropy_grad(base + r * cols, cols, col0, labels[r], lse[r], scale[r]);
    }
  });
}

// One parallel loop per row, so the row is read for max, exp-sum and gradient while it is still in cache.
template <typename Scalar>
void cpu_onepass_rows(at::Tensor& logits, const int64_t* labels, const float* scale, float* lse, float* loss) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  Scalar* base = logits.mutable_data_ptr<Scalar>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Scalar* row = base + r * cols;
      lse[r] = softmax_state_lse(row_softmax_state(row, 0, cols));
      loss[r] = cross_entropy_from_lse(lse[r], static_cast<float>(row[labels[r]]));
      row_cross_entropy_grad(row, cols, 0, labels[r], lse[r], scale[r]);
    }
  });
}

#ifdef SFTGO_HAVE_CUDA_KERNELS
LogitType logit_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kFloat ? LogitType::kFloat32 : LogitType::kBFloat16;
}
#endif

}  // namespace

void row_softmax_block(const at::Tensor& logits, int64_t col0, const at::Tensor& labels, RowState& st, at::Tensor* lse,
                       at::Tensor* loss) {
  float* lse_p = lse != nullptr ? lse->mutable_data_ptr<float>() : nullptr;
  float* loss_p = loss != nullptr ? loss->mutable_data_ptr<float>() : nullptr;
  if (logits.is_cuda()) {
#ifdef SFTGO_HAVE_CUDA_KERNELS
    const char* err = row_softmax_block_cuda(
        logits.const_data_ptr(), logit_type(logits), logits.size(0), logits.size(1), logits.stride(0), col0,
        labels.const_data_ptr<int64_t>(), st.max.mutable_data_ptr<float>(), st.sum.mutable_data_ptr<float>(),
        st.label_logit.mutable_data_ptr<float>(), lse_p, loss_p, c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA softmax kernel failed: ", err);
    return;
#else
    SFTGO_FAIL_HINT(ErrorKind::kUsage, "reconfigure with -DSFTGO_CUDA=ON (needs nvcc)",
                    "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_softmax_block<float>(logits, col0, labels.const_data_ptr<int64_t>(), st, lse_p, loss_p);
  } else {
    cpu_softmax_block<c10::BFloat16>(logits, col0, labels.const_data_ptr<int64_t>(), st, lse_p, loss_p);
  }
}

void row_ce_grad(at::Tensor& logits, int64_t col0, const at::Tensor& labels, const at::Tensor& lse,
                 const at::Tensor& scale) {
  if (logits.is_cuda()) {
#ifdef SFTGO_HAVE_CUDA_KERNELS
    const char* err = row_cross_entropy_grad_cuda(
        logits.mutable_data_ptr(), logit_type(logits), logits.size(0), logits.size(1), logits.stride(0), col0,
        labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(), scale.const_data_ptr<float>(),
        c10::cuda::getCurrentCUDAStream().stream());
    SFTGO_CHECK(err == nullptr, ErrorKind::kInternal, "loss: CUDA gradient kernel failed: ", err);
    return;
#else
    SFTGO_FAIL(ErrorKind::kUsage, "loss: CUDA tensors given but this build has no CUDA kernels");
#endif
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_ce_grad<float>(logits, col0, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                       scale.const_data_ptr<float>());
  } else {
    cpu_ce_grad<c10::BFloat16>(logits, col0, labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(),
                               scale.const_data_ptr<float>());
  }
}

void onepass_rows(at::Tensor& logits, const at::Tensor& labels, const at::Tensor& scale, at::Tensor& lse,
                  at::Tensor& loss) {
  if (logits.is_cuda()) {
    const int64_t r = logits.size(0);
    const auto f32 = lse.options();
    RowState st{at::full({r}, -INFINITY, f32), at::zeros({r}, f32), at::zeros({r}, f32)};
    row_softmax_block(logits, 0, labels, st, &lse, &loss);
    row_ce_grad(logits, 0, labels, lse, scale);
    return;
  }
  if (logits.scalar_type() == at::kFloat) {
    cpu_onepass_rows<float>(logits, labels.const_data_ptr<int64_t>(), scale.const_data_ptr<float>(),
                            lse.mutable_data_ptr<float>(), loss.mutable_data_ptr<float>());
  } else {
    cpu_onepass_rows<c10::BFloat16>(logits, labels.const_data_ptr<int64_t>(), scale.const_data_ptr<float>(),
                                    lse.mutable_data_ptr<float>(), loss.mutable_data_ptr<float>());
  }
}

}  // namespace sftgo::kernels
