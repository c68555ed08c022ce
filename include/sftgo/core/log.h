// Rank-aware logging on spdlog. Info goes to stderr from rank 0 only (so `mpirun -np 8` prints one
// stream); warnings and errors come from every rank, prefixed with the rank when world_size > 1.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace sftgo {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// Call once per process; safe to call again (e.g. after the distributed rank becomes known).
void init_logging(int rank = 0, int world_size = 1, LogLevel level = LogLevel::kInfo);
LogLevel parse_log_level(const std::string& name);  // "debug" | "info" | "warn" | "error" | "off"
int log_rank();
int log_world_size();
bool is_rank0();

// The process logger; filtered by rank as described above.
spdlog::logger& logger();

template <typename... Args>
void log_debug(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().debug(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void log_info(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().info(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void log_warn(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().warn(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void log_error(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  logger().error(fmt, std::forward<Args>(args)...);
}

}  // namespace sftgo
