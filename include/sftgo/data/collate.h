// Collation into LibTorch tensors: padding to the longest example, or packing several examples
// into one row without cross-contamination. The only LibTorch part of the data module.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sftgo/data/example.h"

namespace sftgo::data {

// One micro-batch, all on CPU. B rows of S tokens.
// Document ids: 1, 2, ... for the examples in a row (padded mode: 1), 0 for padding. The model allows
// token q to attend to k iff document_ids[q] == document_ids[k] != 0 and k <= q (per-document causal).
// Labels are aligned with input_ids (the loss shifts); the first token of every document is always
// kIgnoreLabel, so no document is ever predicted from the previous one.
struct Batch {
  at::Tensor input_ids;                      // [B, S] int64, pad_id at padding
  at::Tensor labels;                         // [B, S] int64, kIgnoreLabel at prompt/padding/document starts
  at::Tensor position_ids;                   // [B, S] int64, 0.. per document, 0 at padding
  at::Tensor document_ids;                   // [B, S] int32, see above
  at::Tensor attention_mask;                 // [B, S] bool, true at real tokens
  at::Tensor groups;                         // [B, S] uint8, 0 at padding and where an example has no groups
  std::map<std::string, at::Tensor> scores;  // name -> [B, S] float32, 0 where absent
  std::vector<int64_t> example_indices;      // TokenizedExample::index, in row-major order of appearance
  int64_t num_trained_tokens = 0;            // labels != kIgnoreLabel
  bool packed = false;
  int64_t rows() const { return input_ids.size(0); }
  int64_t seq_len() const { return input_ids.size(1); }
};

// pad_to_multiple (both collators): the sequence length S is rounded up to a multiple of it with
// padding, so that on a GPU the attention and GEMM shapes repeat across batches (64 there: cuBLAS and
// the attention kernels pick their tiles per shape, and a new length costs new autotuning / a new
// kernel choice). 1 = no rounding (the CPU default: padding is pure extra work there).
inline constexpr int64_t kGpuPadMultiple = 64;

// One row per example, padded to the longest (optionally rounded up to a multiple of pad_to_multiple).
Batch collate_padded(const std::vector<const TokenizedExample*>& examples, int32_t pad_id, int64_t pad_to_multiple = 1);

// Greedy first-fit in the given order: examples go into rows of at most max_seq_len tokens; returns
// per row the positions in `lengths`. Every length must be <= max_seq_len.
std::vector<std::vector<size_t>> plan_packing(const std::vector<int64_t>& lengths, int64_t max_seq_len);

// Packs the examples into rows of at most max_seq_len (plan_packing) and pads every row to the
// longest row (not to max_seq_len), rounded up to a multiple of pad_to_multiple, so S <= max_seq_len
// rounded up likewise.
Batch collate_packed(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len, int32_t pad_id,
                     int64_t pad_to_multiple = 1);

}  // namespace sftgo::data
