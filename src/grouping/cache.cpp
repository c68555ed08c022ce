// Binary cache of grouping outputs (format in cache.h).
#include "sftgo/grouping/cache.h"

#include <cstring>
#include <filesystem>
#include <string_view>

#include "sftgo/core/cache_file.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/hash.h"

namespace sftgo::grouping {
namespace {

template <typename T>
void put(std::string& buf, T v) {
  buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Bounds-checked reader over the payload bytes.
struct Reader {
  std::string_view buf;
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
  for (const std::string& part : {dataset_fingerprint, function_name, params, sftgo::format("{}", k_percent),
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
  for (const auto& g : out.groups) tokens += g.size();
  std::string payload;
  payload.reserve(16 + out.groups.size() * 4 + tokens * 5);
  put<uint64_t>(payload, out.groups.size());
  put<uint64_t>(payload, tokens);
  for (size_t i = 0; i < out.groups.size(); ++i) {
    SFTGO_CHECK(out.groups[i].size() == out.scores[i].size(), ErrorKind::kInternal, "grouping cache: example ", i,
                " has ", out.groups[i].size(), " mask entries for ", out.scores[i].size(), " scores");
    put<uint32_t>(payload, static_cast<uint32_t>(out.groups[i].size()));
  }
  for (const auto& g : out.groups) payload.append(reinterpret_cast<const char*>(g.data()), g.size());
  for (const auto& s : out.scores) payload.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(float));

  write_cache_file(path, CacheKind::kGroups, kGroupingCacheVersion, key, payload);
}

std::optional<GroupingOutput> load_grouping_cache(const std::string& path, uint64_t key,
                                                  std::span<const data::TokenizedExample> examples) {
  std::vector<size_t> lengths;
  lengths.reserve(examples.size());
  for (const auto& ex : examples) lengths.push_back(ex.ids.size());
  return load_grouping_rows(path, key, lengths);
}

std::optional<GroupingOutput> load_grouping_rows(const std::string& path, uint64_t key,
                                                 std::span<const size_t> lengths) {
  const std::optional<CacheFile> file = read_cache_file(path, CacheKind::kGroups, kGroupingCacheVersion, key);
  if (!file) return std::nullopt;
  auto reject = [&](const std::string& why) -> std::optional<GroupingOutput> {
    warn_cache_rejected(path, CacheKind::kGroups, why);
    return std::nullopt;
  };
  Reader r{file->payload()};
  uint64_t n = 0, tokens = 0;
  if (!r.get(n) || !r.get(tokens)) return reject("payload shorter than its counts");
  if (n != lengths.size()) return reject(sftgo::format("{} examples, dataset has {}", n, lengths.size()));
  const size_t payload_size = r.buf.size();
  if (tokens > payload_size || payload_size != 16 + n * 4 + tokens * 5) return reject("wrong payload size");

  GroupingOutput out;
  out.groups.resize(n);
  out.scores.resize(n);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    r.get(len);
    if (len != lengths[i]) return reject(sftgo::format("example {} has {} tokens, cache {}", i, lengths[i], len));
    out.groups[i].resize(len);
    out.scores[i].resize(len);
    total += len;
  }
  if (total != tokens) return reject("token count mismatch");
  const char* g = r.buf.data() + r.pos;
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
