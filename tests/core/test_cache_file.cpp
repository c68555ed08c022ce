// The binary cache envelope: round trip, and every kind of damage is reported as "no cache".
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "../common/temp_dir.h"
#include "sftgo/core/cache_file.h"
#include "sftgo/core/strings.h"

namespace sftgo {
namespace {

TEST(CacheFile, RoundTripAndIdentity) {
  test_util::TempDir dir;
  const std::string path = dir.path() + "/sub/c.bin";  // the parent directory is created
  const std::string payload("payload bytes \x00\x01\x02 with a NUL", 28);
  write_cache_file(path, CacheKind::kGroups, 3, 0x1234, payload);
  EXPECT_EQ(std::filesystem::file_size(path), kCacheHeaderSize + payload.size());
  auto back = read_cache_file(path, CacheKind::kGroups, 3, 0x1234);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->payload(), payload);
  // Another cache, format version or key is not this file.
  EXPECT_FALSE(read_cache_file(path, CacheKind::kDataset, 3, 0x1234).has_value());
  EXPECT_FALSE(read_cache_file(path, CacheKind::kGroups, 4, 0x1234).has_value());
  EXPECT_FALSE(read_cache_file(path, CacheKind::kGroups, 3, 0x1235).has_value());
  // Missing: no cache, no error. A directory in its place: no cache either.
  EXPECT_FALSE(read_cache_file(dir.path() + "/missing.bin", CacheKind::kGroups, 3, 0x1234).has_value());
  EXPECT_FALSE(read_cache_file(dir.path() + "/sub", CacheKind::kGroups, 3, 0x1234).has_value());
  // An empty payload is a valid cache.
  write_cache_file(path, CacheKind::kDataset, 1, 7, "");
  back = read_cache_file(path, CacheKind::kDataset, 1, 7);
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->payload().empty());
}

TEST(CacheFile, EveryTruncationAndFlippedByteIsRejected) {
  test_util::TempDir dir;
  const std::string path = dir.path() + "/c.bin";
  write_cache_file(path, CacheKind::kDataset, 2, 99, "0123456789abcdefghijklmnopqrstuvwxyz");
  const std::string good = read_file(path);
  ASSERT_TRUE(read_cache_file(path, CacheKind::kDataset, 2, 99).has_value());
  for (size_t cut = 0; cut < good.size(); ++cut) {
    write_file_atomic(path, good.substr(0, cut));
    EXPECT_FALSE(read_cache_file(path, CacheKind::kDataset, 2, 99).has_value()) << "cut at " << cut;
  }
  for (size_t i = 0; i < good.size(); ++i) {  // one bit of every byte, header and payload
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
    write_file_atomic(path, bad);
    EXPECT_FALSE(read_cache_file(path, CacheKind::kDataset, 2, 99).has_value()) << "flip at " << i;
  }
  write_file_atomic(path, good + "x");
  EXPECT_FALSE(read_cache_file(path, CacheKind::kDataset, 2, 99).has_value());
  write_file_atomic(path, good);
  EXPECT_TRUE(read_cache_file(path, CacheKind::kDataset, 2, 99).has_value());
}

}  // namespace
}  // namespace sftgo
