// The binary cache envelope (see cache_file.h).
#include "sftgo/core/cache_file.h"

#include <cstring>
#include <filesystem>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

namespace sftgo {
namespace {

constexpr char kMagic[8] = {'S', 'F', 'T', 'G', 'O', 'C', 'A', 'C'};

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
T get(const std::string& bytes, size_t& pos) {
  T v;
  std::memcpy(&v, bytes.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

// Why the envelope does not match, or "" when it does. bytes.size() >= kCacheHeaderSize.
std::string envelope_problem(const std::string& bytes, CacheKind kind, uint32_t version, uint64_t key) {
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return "not an sftgo cache file (bad magic)";
  size_t pos = sizeof(kMagic);
  const auto file_kind = get<uint32_t>(bytes, pos);
  const auto file_version = get<uint32_t>(bytes, pos);
  const auto file_key = get<uint64_t>(bytes, pos);
  const auto size = get<uint64_t>(bytes, pos);
  const auto hash = get<uint64_t>(bytes, pos);
  if (file_kind != static_cast<uint32_t>(kind)) return sftgo::format("kind {}, expected {}", file_kind, uint32_t(kind));
  if (file_version != version) return sftgo::format("version {}, expected {}", file_version, version);
  if (file_key != key) return "key mismatch";
  if (size != bytes.size() - kCacheHeaderSize) {
    return sftgo::format("payload of {} bytes, header says {} (truncated file?)", bytes.size() - kCacheHeaderSize,
                         size);
  }
  if (hash64(bytes.data() + kCacheHeaderSize, size) != hash) return "payload checksum mismatch";
  return "";
}

}  // namespace

const char* cache_kind_name(CacheKind kind) {
  switch (kind) {
    case CacheKind::kDataset: return "data";
    case CacheKind::kGroups: return "grouping";
  }
  return "unknown";
}

void write_cache_file(const std::string& path, CacheKind kind, uint32_t version, uint64_t key,
                      std::string_view payload) {
  std::string file;
  file.reserve(kCacheHeaderSize + payload.size());
  file.append(kMagic, sizeof(kMagic));
  put<uint32_t>(file, static_cast<uint32_t>(kind));
  put<uint32_t>(file, version);
  put<uint64_t>(file, key);
  put<uint64_t>(file, payload.size());
  put<uint64_t>(file, hash64(payload.data(), payload.size()));
  file += payload;
  write_file_atomic(path, file);
}

std::optional<CacheFile> read_cache_file(const std::string& path, CacheKind kind, uint32_t version, uint64_t key) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  std::string bytes;
  try {
    bytes = read_file(path);
  } catch (const Error& e) {
    warn_cache_rejected(path, kind, e.message());
    return std::nullopt;
  }
  const std::string problem =
      bytes.size() < kCacheHeaderSize
          ? sftgo::format("{} bytes, shorter than the {}-byte header", bytes.size(), kCacheHeaderSize)
          : envelope_problem(bytes, kind, version, key);
  if (!problem.empty()) {
    warn_cache_rejected(path, kind, problem);
    return std::nullopt;
  }
  return CacheFile(std::move(bytes));
}

void warn_cache_rejected(const std::string& path, CacheKind kind, std::string_view why) {
  log_warn("{} cache {} ignored ({}); rebuilding it", cache_kind_name(kind), path, why);
}

}  // namespace sftgo
