// Shared helpers of the loss tests: random inputs, running a loss with autograd, error measures.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <functional>

#include "reference_loss.h"
#include "sftgo/loss/group_loss.h"

namespace sftgo::loss::testing {

struct Inputs {
  at::Tensor hidden;  // [T, H]
  at::Tensor weight;  // [V, H]
  at::Tensor labels;  // [T] int64, -100 = ignored
  at::Tensor groups;  // [T] int8
};

// ignore_p: probability a token is ignored; imp_p: probability a token is important.
inline Inputs make_inputs(int64_t t, int64_t h, int64_t v, uint64_t seed, double ignore_p = 0.25, double imp_p = 0.4,
                          at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Inputs in;
  // Logit scale ~N(0, 2^2): a realistic spread that still exercises the max-subtraction.
  in.hidden = at::randn({t, h}, gen, at::kFloat);
  in.weight = at::randn({v, h}, gen, at::kFloat) * (2.0 / std::sqrt(static_cast<double>(h)));
  in.labels = at::randint(0, v, {t}, gen, at::kLong);
  const at::Tensor ignore = at::rand({t}, gen) < ignore_p;
  in.labels.masked_fill_(ignore, -100);
  in.groups = (at::rand({t}, gen) < imp_p).to(at::kChar);
  in.hidden = in.hidden.to(device, dtype);
  in.weight = in.weight.to(device, dtype);
  in.labels = in.labels.to(device);
  in.groups = in.groups.to(device);
  return in;
}

struct Result {
  double loss = 0.0;
  at::Tensor grad_hidden;  // [T, H] fp32 on CPU
  at::Tensor grad_weight;  // [V, H] fp32 on CPU
  LossInfo info;
};

using LossFn = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const FusedLossOptions&, LossInfo*)>;

// The oracle in float64: its own rounding is then negligible and the measured error is the fused
// path's alone.
inline at::Tensor reference_f64(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                                const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  return reference_group_loss(hidden, weight, labels, groups, options, info, at::kDouble);
}

inline at::Tensor fused(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                        const at::Tensor& groups, const FusedLossOptions& options, LossInfo* info) {
  return fused_group_loss(hidden, weight, labels, groups, options, info);
}

inline Result run_loss(const LossFn& fn, const Inputs& in, const FusedLossOptions& options) {
  at::Tensor hidden = in.hidden.detach().clone().requires_grad_(true);
  at::Tensor weight = in.weight.detach().clone().requires_grad_(true);
  Result r;
  at::Tensor loss = fn(hidden, weight, in.labels, in.groups, options, &r.info);
  loss.backward();
  r.loss = loss.item<double>();
  r.grad_hidden = hidden.grad().to(at::kCPU, at::kFloat);
  r.grad_weight = weight.grad().to(at::kCPU, at::kFloat);
  return r;
}

// max |a - b| / max |b|, 0 when both are all zero. Normalising by the largest reference entry rather
// than elementwise keeps tiny entries (softmax tails) from dominating with meaningless ratios.
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  const double denom = b.abs().max().item<double>();
  const double diff = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  if (denom == 0.0) return diff;
  return diff / denom;
}

inline double rel_error(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

}  // namespace sftgo::loss::testing
