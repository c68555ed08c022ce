// Rho-1 token selection: the important tokens are those with the largest excess loss
// (current model loss - reference model loss). The losses come from the model module; this is only
// the selection. Row-major [B, S] buffers; positions with trained == 0 are never selected.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace sftgo::grouping {

enum class Selection { kSequence, kBatch };
Selection parse_selection(const std::string& name);  // "sequence" | "batch"; kConfig otherwise

// Returns a [B, S] uint8 mask: 1 for the top-k% excess-loss trained tokens of each row
// (kSequence) or of the whole batch (kBatch), with the tie rule of grouping.h.
// current_loss, ref_loss: [B, S] float; trained: [B, S] uint8.
std::vector<uint8_t> select_rho1(std::span<const float> current_loss, std::span<const float> ref_loss,
                                 std::span<const uint8_t> trained, int64_t batch, int64_t seq_len, double k_percent,
                                 Selection selection);

}  // namespace sftgo::grouping
