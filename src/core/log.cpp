#include "sftgo/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>

#include "sftgo/core/error.h"

namespace sftgo {
namespace {
int g_rank = 0;
int g_world = 1;
std::shared_ptr<spdlog::logger> g_logger;

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}
}  // namespace

void init_logging(int rank, int world_size, LogLevel level) {
  g_rank = rank;
  g_world = world_size;
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  g_logger = std::make_shared<spdlog::logger>("sftgo", sink);
  std::string prefix = world_size > 1 ? "[rank " + std::to_string(rank) + "] " : "";
  g_logger->set_pattern("[%H:%M:%S] %^%l%$ " + prefix + "%v");
  // Non-zero ranks only speak up for problems: one readable stream under mpirun.
  auto lvl = to_spdlog(level);
  if (rank != 0 && lvl < spdlog::level::warn) lvl = spdlog::level::warn;
  g_logger->set_level(lvl);
}

LogLevel parse_log_level(const std::string& name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  SFTGO_FAIL_HINT(ErrorKind::kUsage, "use debug, info, warn, error or off", "unknown log level '", name, "'");
}

int log_rank() { return g_rank; }
int log_world_size() { return g_world; }
bool is_rank0() { return g_rank == 0; }

static spdlog::logger& logger() {
  if (!g_logger) init_logging();
  return *g_logger;
}

bool log_enabled(LogLevel level) { return logger().should_log(to_spdlog(level)); }

void log_message(LogLevel level, std::string_view message) { logger().log(to_spdlog(level), "{}", message); }

}  // namespace sftgo
