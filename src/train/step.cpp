// The pieces of a training step (step.h).
#include "step.h"

#include <torch/torch.h>

#include <cmath>

#include "sftgo/core/error.h"
#include "sftgo/model/llama.h"

namespace sftgo::train {

MicroBatch to_device(const data::Batch& b, c10::Device device, const std::vector<std::string>& score_names) {
  MicroBatch d;
  const int64_t S = b.seq_len();
  d.ids = b.input_ids.to(device);
  d.positions = b.position_ids.to(device);
  // Padded rows are right-padded, so plain causal attention never lets a real token see padding;
  // packed rows need per-document masks.
  if (b.packed) d.mask = model::document_causal_mask(b.document_ids.to(device));
  at::Tensor labels = b.labels.slice(1, 1, S).reshape({-1});
  at::Tensor groups = b.groups.slice(1, 1, S).reshape({-1});
  at::Tensor select = (labels != data::kIgnoreLabel).nonzero().squeeze(1);  // [T]
  d.labels = labels.index_select(0, select).to(device);
  at::Tensor g = groups.index_select(0, select);
  d.groups = g.to(device);
  d.trained = select.numel();
  d.important = g.sum().item<int64_t>();
  d.tokens = b.attention_mask.sum().item<int64_t>();
  d.view.rows = b.rows();
  d.view.positions = S - 1;
  for (const auto& name : score_names) {
    auto it = b.scores.find(name);
    SFTGO_CHECK(it != b.scores.end(), ErrorKind::kInternal, "micro-batch without example scores '", name, "'");
    d.view.scores[name] = it->second.slice(1, 1, S).to(device);  // [B, S-1]
  }
  d.view.trained = (b.labels.slice(1, 1, S) != data::kIgnoreLabel).to(device);  // [B, S-1]
  d.view.select = select.to(device);
  return d;
}

loss::GroupStats group_counts(const MicroBatch& b) {
  loss::GroupStats c;
  c.count[1] = b.important;
  c.count[0] = b.trained - b.important;
  return c;
}

at::Tensor token_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  const at::Tensor w = weight.to(at::kFloat);
  for (int64_t i = 0; i < hidden.size(0); i += 1024) {
    const int64_t n = std::min<int64_t>(1024, hidden.size(0) - i);
    at::Tensor logits = at::linear(hidden.narrow(0, i, n).to(at::kFloat), w);  // [n,V]
    at::Tensor picked = logits.gather(1, labels.narrow(0, i, n).unsqueeze(1)).squeeze(1);
    parts.push_back(at::logsumexp(logits, 1) - picked);
  }
  if (parts.empty()) return at::zeros({0}, hidden.options().dtype(at::kFloat));
  return at::cat(parts);
}

namespace {
// The statistics as doubles for one all-reduce, and back (counts are exact in a double up to 2^53).
void append(std::vector<double>& v, const loss::GroupStats& s) {
  v.insert(v.end(), {s.loss_sum[0], s.loss_sum[1], static_cast<double>(s.count[0]), static_cast<double>(s.count[1])});
}
loss::GroupStats stats_at(const std::vector<double>& v, size_t at) {
  loss::GroupStats s;
  s.loss_sum[0] = v[at];
  s.loss_sum[1] = v[at + 1];
  s.count[0] = static_cast<int64_t>(std::llround(v[at + 2]));
  s.count[1] = static_cast<int64_t>(std::llround(v[at + 3]));
  return s;
}
constexpr size_t kStatsValues = 4;
}  // namespace

loss::GroupStats all_reduce_stats(dist::Comm& comm, const loss::GroupStats& local, bool* finite) {
  std::vector<double> v;
  append(v, local);
  if (finite) v.push_back(*finite ? 0.0 : 1.0);  // non-finite ranks, summed
  v = comm.sum(v);
  if (finite) *finite = v[kStatsValues] == 0.0;
  return stats_at(v, 0);
}

void StepTotals::all_reduce(dist::Comm& comm) {
  std::vector<double> v;
  append(v, seen);
  v.insert(v.end(), {finite ? 0.0 : 1.0, stop ? 1.0 : 0.0, static_cast<double>(tokens), micro_loss_sum});
  v = comm.sum(v);
  seen = stats_at(v, 0);
  finite = v[kStatsValues] == 0.0;
  stop = v[kStatsValues + 1] > 0.0;
  tokens = static_cast<int64_t>(std::llround(v[kStatsValues + 2]));
  micro_loss_sum = v[kStatsValues + 3];
}

}  // namespace sftgo::train
