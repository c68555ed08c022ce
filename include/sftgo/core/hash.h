// Content hashes for cache keys, file checksums and export checks (no LibTorch).
// The tokenizer's in-memory table hash (src/tokenizer/hash_maps.h) is deliberately separate: it is
// inlined into the hottest lookup, tuned for short keys and never persisted, whereas hash64 values
// are written to disk and must stay the same across versions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sftgo {

inline constexpr uint64_t kHash64Seed = 0x9e3779b97f4a7c15ULL;

// 64-bit hash of bytes: FNV-1a over 8-byte little-endian words (bytes for the tail) with a fold per
// word, the length mixed into the seed, and a splitmix64 finaliser so nearby inputs spread over all
// bits. Not cryptographic. Its values name cache files and sit inside them: changing this function
// means bumping every cache version (data, grouping).
uint64_t hash64(const void* data, size_t size, uint64_t seed = kHash64Seed);

// Lower-case hex SHA-256 (FIPS 180-4) of bytes / of a file's bytes (kIo error naming the path when
// it cannot be read). Used where an outside tool wrote the checksum (hashlib in the export scripts).
std::string sha256_hex(std::string_view bytes);
std::string sha256_file(const std::string& path);

}  // namespace sftgo
