// Padding and packing collation. The only translation unit of the data module that needs LibTorch.
#include "sftgo/data/collate.h"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "sftgo/core/error.h"

namespace sftgo::data {
namespace {

// Rows of examples: each row is a list of examples laid out back to back.
using Rows = std::vector<std::vector<const TokenizedExample*>>;

Batch collate_rows(const Rows& rows, int64_t seq_len, int32_t pad_id, bool packed) {
  const int64_t b = static_cast<int64_t>(rows.size());
  std::set<std::string> score_names;
  for (const auto& row : rows)
    for (const auto* ex : row)
      for (const auto& [name, v] : ex->scores) score_names.insert(name);

  Batch batch;
  batch.packed = packed;
  batch.input_ids = torch::full({b, seq_len}, static_cast<int64_t>(pad_id), torch::kInt64);               // [B, S]
  batch.labels = torch::full({b, seq_len}, static_cast<int64_t>(kIgnoreLabel), torch::kInt64);            // [B, S]
  batch.position_ids = torch::zeros({b, seq_len}, torch::kInt64);                                         // [B, S]
  batch.document_ids = torch::zeros({b, seq_len}, torch::kInt32);                                         // [B, S]
  batch.attention_mask = torch::zeros({b, seq_len}, torch::kBool);                                        // [B, S]
  batch.groups = torch::zeros({b, seq_len}, torch::kUInt8);                                               // [B, S]
  for (const auto& name : score_names) batch.scores[name] = torch::zeros({b, seq_len}, torch::kFloat32);  // [B, S]

  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* labels = batch.labels.data_ptr<int64_t>();
  int64_t* pos = batch.position_ids.data_ptr<int64_t>();
  int32_t* doc = batch.document_ids.data_ptr<int32_t>();
  bool* mask = batch.attention_mask.data_ptr<bool>();
  uint8_t* groups = batch.groups.data_ptr<uint8_t>();
  int64_t trained = 0;
  for (int64_t r = 0; r < b; ++r) {
    int64_t off = r * seq_len;
    int32_t doc_id = 0;
    for (const TokenizedExample* ex : rows[static_cast<size_t>(r)]) {
      ex->check_consistent();
      const int64_t n = static_cast<int64_t>(ex->ids.size());
      SFTGO_CHECK(off + n <= (r + 1) * seq_len, ErrorKind::kInternal, "row ", r, " overflows ", seq_len);
      ++doc_id;
      for (int64_t t = 0; t < n; ++t) {
        ids[off + t] = ex->ids[t];
        // A document's first token is never a target: nothing before it in its own document.
        labels[off + t] = t == 0 ? kIgnoreLabel : ex->labels[t];
        trained += labels[off + t] != kIgnoreLabel;
        pos[off + t] = t;
        doc[off + t] = doc_id;
        mask[off + t] = true;
        if (!ex->groups.empty()) groups[off + t] = ex->groups[t];
      }
      for (auto& [name, v] : ex->scores) {
        float* dst = batch.scores[name].data_ptr<float>();
        std::copy(v.begin(), v.end(), dst + off);
      }
      batch.example_indices.push_back(ex->index);
      off += n;
    }
  }
  batch.num_trained_tokens = trained;
  return batch;
}

}  // namespace

Batch collate_padded(const std::vector<const TokenizedExample*>& examples, int32_t pad_id, int64_t pad_to_multiple) {
  SFTGO_CHECK(!examples.empty(), ErrorKind::kInternal, "collate of an empty batch");
  SFTGO_CHECK(pad_to_multiple >= 1, ErrorKind::kInternal, "collate: pad_to_multiple ", pad_to_multiple, " < 1");
  int64_t longest = 0;
  for (const auto* ex : examples) longest = std::max<int64_t>(longest, static_cast<int64_t>(ex->ids.size()));
  if (pad_to_multiple > 1) longest = (longest + pad_to_multiple - 1) / pad_to_multiple * pad_to_multiple;
  Rows rows;
  for (const auto* ex : examples) rows.push_back({ex});
  return collate_rows(rows, longest, pad_id, false);
}

std::vector<std::vector<size_t>> plan_packing(const std::vector<int64_t>& lengths, int64_t max_seq_len) {
  std::vector<std::vector<size_t>> rows;
  std::vector<int64_t> used;
  for (size_t i = 0; i < lengths.size(); ++i) {
    SFTGO_CHECK(lengths[i] <= max_seq_len, ErrorKind::kInternal, "example of ", lengths[i],
                " tokens cannot be packed into rows of ", max_seq_len);
    size_t r = 0;
    while (r < rows.size() && used[r] + lengths[i] > max_seq_len) ++r;  // first row with room
    if (r == rows.size()) {
      rows.emplace_back();
      used.push_back(0);
    }
    rows[r].push_back(i);
    used[r] += lengths[i];
  }
  return rows;
}

Batch collate_packed(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len, int32_t pad_id,
                     int64_t pad_to_multiple) {
  SFTGO_CHECK(!examples.empty(), ErrorKind::kInternal, "collate of an empty batch");
  SFTGO_CHECK(pad_to_multiple >= 1, ErrorKind::kInternal, "collate: pad_to_multiple ", pad_to_multiple, " < 1");
  std::vector<int64_t> lengths;
  for (const auto* ex : examples) lengths.push_back(static_cast<int64_t>(ex->ids.size()));
  Rows rows;
  int64_t longest = 0;
  for (const auto& plan : plan_packing(lengths, max_seq_len)) {
    rows.emplace_back();
    int64_t used = 0;
    for (size_t i : plan) {
      rows.back().push_back(examples[i]);
      used += lengths[i];
    }
    longest = std::max(longest, used);
  }
  longest = (longest + pad_to_multiple - 1) / pad_to_multiple * pad_to_multiple;
  return collate_rows(rows, longest, pad_id, true);
}

}  // namespace sftgo::data
