// The tokenized example: what every stage after the template sees. No LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sftgo/data/conversation.h"

namespace sftgo::data {

// Label of a token that is not trained (prompt, headers, padding); matches PyTorch's ignore_index.
inline constexpr int32_t kIgnoreLabel = -100;

// Labels are ALIGNED with ids (Hugging Face convention): labels[t] == ids[t] for a trained token and
// kIgnoreLabel otherwise; the loss shifts by one (logits at t predict labels[t + 1]).
struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;
  // Per-token side data that travels with the example through packing and collation. Both are
  // either empty (not filled yet) or ids.size() long.
  std::vector<uint8_t> groups;                       // group mask, filled by the grouping functions
  std::map<std::string, std::vector<float>> scores;  // e.g. "ref_loss" -> reference-model losses
  int64_t index = -1;  // position in the prepared dataset (stable across runs with the same cache key)
  SourceRef source;    // the record it came from
  bool truncated = false;

  size_t size() const { return ids.size(); }
  int64_t num_trained() const;
  // Throws sftgo::Error(kInternal) when ids/labels/groups/scores lengths disagree.
  void check_consistent() const;
};

}  // namespace sftgo::data
