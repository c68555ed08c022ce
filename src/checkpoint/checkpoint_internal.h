// Helpers shared by the checkpoint module's sources (not part of its interface).
#pragma once

#include <cstdint>
#include <filesystem>

namespace sftgo::checkpoint::detail {

// step_NNNNNNNN -> N; -1 for any other name.
int64_t step_of(const std::filesystem::path& dir);

}  // namespace sftgo::checkpoint::detail
