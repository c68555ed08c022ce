// Byte-level BPE: turns one pre-token (raw bytes) into ids, as HF's BPE model does, with a merge
// map keyed by id pairs and a per-thread word cache.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hash_maps.h"
#include "tokenizer_json.h"

namespace sftgo::tok {

class BpeModel {
 public:
  // Builds the lookup tables from the spelled vocab and merges; `path` names the file in errors.
  // `spelled_to_id` must hold spec.vocab; merges naming unknown tokens throw.
  void build(const TokenizerSpec& spec, const StringMap<int32_t>& spelled_to_id, const std::string& path);

  // Appends the ids of one pre-token given as raw bytes.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  void merge_small(std::vector<int32_t>& ids) const;
  void merge_large(std::vector<int32_t>& ids) const;

  StringMap<int32_t> bytes_to_id_;      // token's raw bytes -> id (ignore_merges whole-word lookup)
  PairMap merges_;                      // (left, right) -> (rank, merged id)
  std::array<int32_t, 256> byte_id_{};  // single-byte tokens, -1 when absent
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  uint64_t instance_id_ = 0;  // identifies this model to the thread-local word cache
};

}  // namespace sftgo::tok
