// Binary cache of grouping outputs (format in cache.h).
#include "sftgo/grouping/cache.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "sftgo/core/format.h"

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

namespace sftgo::grouping {
namespace {

constexpr char kMagic[8] = {'S', 'F', 'T', 'G', 'O', 'G', 'R', 'P'};
constexpr size_t kHeaderSize = 8 + 4 + 4 + 8 * 4;

template <typename T>
void put(std::string& buf, T v) {
  buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Bounds-checked reader over the file bytes.
struct Reader {
  const std::string& buf;
  size_t pos = 0;
  template <typename T>
  bool get(T& v) {
    if (buf.size() - pos < sizeof(T)) return false;
    std::memcpy(&v, buf.data() + pos, sizeof(T));
    pos += sizeof(T);
    return true;
  }
};

}  // namespace

uint64_t hash64(const void* data, size_t size, uint64_t seed) {
  // FNV-1a over 8-byte little-endian words (fast on large buffers), bytes for the tail, then a
  // splitmix finaliser so nearby inputs spread over all bits.
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed ^ (size * 0x9e3779b97f4a7c15ULL);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * kPrime;
    h ^= h >> 29;
  }
  for (; i < size; ++i) h = (h ^ p[i]) * kPrime;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

uint64_t examples_fingerprint(const std::vector<data::TokenizedExample>& examples) {
  uint64_t h = hash64(nullptr, 0, examples.size());
  for (const auto& ex : examples) {
    h = hash64(ex.ids.data(), ex.ids.size() * sizeof(int32_t), h);
    h = hash64(ex.labels.data(), ex.labels.size() * sizeof(int32_t), h);
  }
  return h;
}

uint64_t grouping_cache_key(const std::string& dataset_fingerprint, const std::string& function_name,
                            const std::string& params, double k_percent) {
  // Length-prefixed fields so ("ab","c") and ("a","bc") differ.
  std::string s;
  for (const std::string& part :
       {dataset_fingerprint, function_name, params, sftgo::format("{}", k_percent),
        std::to_string(kGroupingCacheVersion)}) {
    put<uint64_t>(s, part.size());
    s += part;
  }
  return hash64(s.data(), s.size());
}

std::string grouping_cache_path(const std::string& cache_dir, const std::string& function_name, uint64_t key) {
  return (std::filesystem::path(cache_dir) / sftgo::format("groups-{}-{:016x}.bin", function_name, key)).string();
}

void save_grouping_cache(const std::string& path, uint64_t key, const GroupingOutput& out) {
  SFTGO_CHECK(out.groups.size() == out.scores.size(), ErrorKind::kInternal, "grouping cache: ", out.groups.size(),
              " masks for ", out.scores.size(), " score rows");
  uint64_t tokens = 0;
  std::string payload;
  for (size_t i = 0; i < out.groups.size(); ++i) {
    SFTGO_CHECK(out.groups[i].size() == out.scores[i].size(), ErrorKind::kInternal, "grouping cache: example ", i,
                " has ", out.groups[i].size(), " mask entries for ", out.scores[i].size(), " scores");
    put<uint32_t>(payload, static_cast<uint32_t>(out.groups[i].size()));
    tokens += out.groups[i].size();
  }
  payload.reserve(payload.size() + tokens * 5);
  for (const auto& g : out.groups) payload.append(reinterpret_cast<const char*>(g.data()), g.size());
  for (const auto& s : out.scores) payload.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(float));

  std::string file;
  file.reserve(kHeaderSize + payload.size());
  file.append(kMagic, sizeof(kMagic));
  put<uint32_t>(file, kGroupingCacheVersion);
  put<uint32_t>(file, 0);
  put<uint64_t>(file, key);
  put<uint64_t>(file, out.groups.size());
  put<uint64_t>(file, tokens);
  put<uint64_t>(file, hash64(payload.data(), payload.size()));
  file += payload;
  write_file_atomic(path, file);
}

std::optional<GroupingOutput> load_grouping_cache(const std::string& path, uint64_t key,
                                                  const std::vector<data::TokenizedExample>& examples) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  auto reject = [&](const std::string& why) -> std::optional<GroupingOutput> {
    log_warn("grouping cache {} ignored ({}); recomputing", path, why);
    return std::nullopt;
  };
  std::string buf;
  try {
    buf = read_file(path);
  } catch (const std::exception& e) {
    return reject(e.what());
  }
  Reader r{buf};
  char magic[8];
  uint32_t version = 0, reserved = 0;
  uint64_t file_key = 0, n = 0, tokens = 0, payload_hash = 0;
  if (buf.size() < kHeaderSize) return reject("truncated header");
  std::memcpy(magic, buf.data(), 8);
  r.pos = 8;
  r.get(version) && r.get(reserved) && r.get(file_key) && r.get(n) && r.get(tokens) && r.get(payload_hash);
  if (std::memcmp(magic, kMagic, 8) != 0) return reject("bad magic");
  if (version != kGroupingCacheVersion) return reject(sftgo::format("version {} != {}", version, kGroupingCacheVersion));
  if (file_key != key) return reject("key mismatch");
  if (n != examples.size()) return reject(sftgo::format("{} examples, dataset has {}", n, examples.size()));
  const size_t payload_size = buf.size() - kHeaderSize;
  if (tokens > payload_size || payload_size != n * 4 + tokens * 5) return reject("wrong payload size");
  if (hash64(buf.data() + kHeaderSize, payload_size) != payload_hash) return reject("payload checksum mismatch");

  GroupingOutput out;
  out.groups.resize(n);
  out.scores.resize(n);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    r.get(len);
    if (len != examples[i].ids.size())
      return reject(sftgo::format("example {} has {} tokens, cache {}", i, examples[i].ids.size(), len));
    out.groups[i].resize(len);
    out.scores[i].resize(len);
    total += len;
  }
  if (total != tokens) return reject("token count mismatch");
  const char* g = buf.data() + r.pos;
  const char* s = g + tokens;
  for (size_t i = 0; i < n; ++i) {
    const size_t len = out.groups[i].size();
    std::memcpy(out.groups[i].data(), g, len);
    std::memcpy(out.scores[i].data(), s, len * sizeof(float));
    g += len;
    s += len * sizeof(float);
    for (uint8_t v : out.groups[i])
      if (v > kGroupImportant) return reject(sftgo::format("invalid group value {}", int(v)));
  }
  return out;
}

}  // namespace sftgo::grouping
