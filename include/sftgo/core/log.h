// Rank-aware logging. Info goes to stderr from rank 0 only (so `mpirun -np 8` prints one stream);
// warnings and errors come from every rank, prefixed with the rank when world_size > 1.
// spdlog does the writing inside log.cpp only: this header stays free of fmt/spdlog because
// LibTorch's bundled fmt clashes with the system one (see format.h).
#pragma once

#include <string>
#include <string_view>

#include "sftgo/core/format.h"

namespace sftgo {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// Call once per process; safe to call again (e.g. after the distributed rank becomes known).
void init_logging(int rank = 0, int world_size = 1, LogLevel level = LogLevel::kInfo);
LogLevel parse_log_level(const std::string& name);  // "debug" | "info" | "warn" | "error" | "off"
int log_rank();
int log_world_size();
bool is_rank0();
// Whether a message of this level would be printed by this process.
bool log_enabled(LogLevel level);
void log_message(LogLevel level, std::string_view message);

template <typename... Args>
void log_debug(std::string_view fmt, const Args&... args) {
  if (log_enabled(LogLevel::kDebug)) log_message(LogLevel::kDebug, format(fmt, args...));
}
template <typename... Args>
void log_info(std::string_view fmt, const Args&... args) {
  if (log_enabled(LogLevel::kInfo)) log_message(LogLevel::kInfo, format(fmt, args...));
}
template <typename... Args>
void log_warn(std::string_view fmt, const Args&... args) {
  if (log_enabled(LogLevel::kWarn)) log_message(LogLevel::kWarn, format(fmt, args...));
}
template <typename... Args>
void log_error(std::string_view fmt, const Args&... args) {
  if (log_enabled(LogLevel::kError)) log_message(LogLevel::kError, format(fmt, args...));
}

}  // namespace sftgo
