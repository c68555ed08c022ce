// Rho-1's selection on host buffers: top-k% excess loss (current - reference). The grouping function
// itself (reference scoring, per-step selection) is in rho1_torch.cpp.
#include "sftgo/grouping/rho1.h"

#include "sftgo/grouping/grouping.h"

#include "sftgo/core/error.h"

namespace sftgo::grouping {

Selection parse_selection(const std::string& name) {
  if (name == "sequence") return Selection::kSequence;
  if (name == "batch") return Selection::kBatch;
  SFTGO_FAIL_HINT(ErrorKind::kConfig, "use sequence or batch", "unknown grouping.selection '", name, "'");
}

std::vector<uint8_t> select_rho1(std::span<const float> current_loss, std::span<const float> ref_loss,
                                 std::span<const uint8_t> trained, int64_t batch, int64_t seq_len, double k_percent,
                                 Selection selection) {
  SFTGO_CHECK(batch >= 0 && seq_len >= 0, ErrorKind::kInternal, "select_rho1: bad shape [", batch, ", ", seq_len, "]");
  const auto n = static_cast<size_t>(batch * seq_len);
  SFTGO_CHECK(current_loss.size() == n && ref_loss.size() == n && trained.size() == n, ErrorKind::kInternal,
              "select_rho1: shape [", batch, ", ", seq_len, "] but current ", current_loss.size(), ", reference ",
              ref_loss.size(), ", mask ", trained.size(), " entries");
  std::vector<float> excess(n, 0.0f);
  for (size_t i = 0; i < n; ++i)
    if (trained[i]) excess[i] = current_loss[i] - ref_loss[i];
  std::vector<uint8_t> out(n, kGroupOther);
  const auto s = static_cast<size_t>(seq_len);
  if (selection == Selection::kSequence) {
    for (int64_t b = 0; b < batch; ++b) {
      const size_t off = static_cast<size_t>(b) * s;
      auto row = select_top_k(std::span<const float>(excess).subspan(off, s), trained.subspan(off, s), k_percent);
      std::copy(row.begin(), row.end(), out.begin() + static_cast<std::ptrdiff_t>(off));
    }
  } else {
    std::vector<std::span<const float>> rows;
    std::vector<std::span<const uint8_t>> masks;
    for (int64_t b = 0; b < batch; ++b) {
      rows.push_back(std::span<const float>(excess).subspan(static_cast<size_t>(b) * s, s));
      masks.push_back(trained.subspan(static_cast<size_t>(b) * s, s));
    }
    auto sel = select_top_k_batch(rows, masks, k_percent);
    for (int64_t b = 0; b < batch; ++b)
      std::copy(sel[static_cast<size_t>(b)].begin(), sel[static_cast<size_t>(b)].end(),
                out.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(b) * s));
  }
  return out;
}

}  // namespace sftgo::grouping
