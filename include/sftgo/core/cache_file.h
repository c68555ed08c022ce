// The one on-disk envelope of sftgo's binary caches (prepared data, grouping masks). No LibTorch.
// Layout (little-endian), 40-byte header then the payload:
//   magic "SFTGOCAC" | u32 kind | u32 version | u64 key | u64 payload size | u64 hash64(payload)
// `kind` says which cache wrote it, `version` is that cache's payload format (bump it whenever the
// payload layout or the meaning of `key` changes), `key` is the caller's identity of the inputs.
// Files are written atomically; a reader that finds anything off (short file, other magic, kind,
// version or key, size or checksum mismatch) gets nullopt plus a warning, so the caller rebuilds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sftgo {

enum class CacheKind : uint32_t { kDataset = 1, kGroups = 2 };
const char* cache_kind_name(CacheKind kind);  // "data" | "grouping"

inline constexpr size_t kCacheHeaderSize = 40;

void write_cache_file(const std::string& path, CacheKind kind, uint32_t version, uint64_t key,
                      std::string_view payload);

// A cache file whose envelope checked out; payload() views into the bytes it owns.
class CacheFile {
 public:
  explicit CacheFile(std::string bytes) : bytes_(std::move(bytes)) {}
  std::string_view payload() const { return std::string_view(bytes_).substr(kCacheHeaderSize); }

 private:
  std::string bytes_;
};

// nullopt, silently, when `path` does not exist; nullopt with a warning naming the file and the
// reason when it cannot be read or its envelope does not match (kind, version, key, size, checksum).
std::optional<CacheFile> read_cache_file(const std::string& path, CacheKind kind, uint32_t version, uint64_t key);

// The warning read_cache_file gives, for payload-level checks done by the caller:
// "<kind> cache <path> ignored (<why>); rebuilding it".
void warn_cache_rejected(const std::string& path, CacheKind kind, std::string_view why);

}  // namespace sftgo
