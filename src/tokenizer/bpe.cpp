#include "bpe.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <queue>

#include "byte_level.h"
#include "sftgo/core/error.h"

namespace sftgo::tok {
namespace {

constexpr size_t kSmallWord = 48;       // below this, a rank scan beats a heap
constexpr size_t kMaxCachedWord = 256;  // bytes; longer words are rare and would bloat the cache
constexpr size_t kMaxCacheEntries = 1 << 17;
constexpr uint32_t kNoMerge = UINT32_MAX;

std::atomic<uint64_t> g_next_instance{1};

// Cached merge results for the words one thread has seen, for one BpeModel at a time.
struct WordCache {
  uint64_t owner = 0;
  StringMap<std::pair<uint32_t, uint32_t>> index;  // word -> (offset, count) in ids
  std::vector<int32_t> ids;

  void reset(uint64_t new_owner) {
    owner = new_owner;
    index.clear();
    ids.clear();
  }
};

WordCache& thread_cache(uint64_t owner) {
  thread_local WordCache cache;
  if (cache.owner != owner) cache.reset(owner);
  return cache;
}

}  // namespace

void BpeModel::build(const TokenizerSpec& spec, const StringMap<int32_t>& spelled_to_id, const std::string& path) {
  instance_id_ = g_next_instance.fetch_add(1);
  ignore_merges_ = spec.ignore_merges;
  fuse_unk_ = spec.fuse_unk;
  byte_id_.fill(-1);
  bytes_to_id_.reserve(spec.vocab.size());
  std::string raw;
  for (const auto& [spelled, id] : spec.vocab) {
    // Tokens spelled outside the byte-level alphabet can never come out of byte-level text.
    if (!spelled_to_bytes(spelled, raw)) continue;
    bytes_to_id_.insert(raw, id);
    if (raw.size() == 1) byte_id_[static_cast<uint8_t>(raw[0])] = id;
  }
  if (spec.unk_token) {
    const int32_t* unk = spelled_to_id.find(*spec.unk_token);
    SFTGO_CHECK(unk, ErrorKind::kTokenizer, path, ": model.unk_token \"", *spec.unk_token, "\" is not in model.vocab");
    unk_id_ = *unk;
  }

  merges_.reserve(spec.merges.size());
  // Loading takes ~840k random lookups into a 6 MB table: hash a block of merges first and
  // prefetch their slots, so the lookups overlap their cache misses.
  constexpr size_t kBlock = 32;
  uint64_t hashes[kBlock][3];
  std::string joined[kBlock];
  for (size_t base = 0; base < spec.merges.size(); base += kBlock) {
    const size_t count = std::min(kBlock, spec.merges.size() - base);
    for (size_t k = 0; k < count; ++k) {
      const auto& [a, b] = spec.merges[base + k];
      joined[k].assign(a).append(b);
      hashes[k][0] = hash_bytes(a);
      hashes[k][1] = hash_bytes(b);
      hashes[k][2] = hash_bytes(joined[k]);
      for (uint64_t h : hashes[k]) spelled_to_id.prefetch(h);
    }
    for (size_t k = 0; k < count; ++k) {
      const size_t rank = base + k;
      const std::string& a = spec.merges[rank].first;  // named refs: lambdas can't capture bindings in clang 14
      const std::string& b = spec.merges[rank].second;
      const int32_t* ia = spelled_to_id.find_hashed(a, hashes[k][0]);
      const int32_t* ib = spelled_to_id.find_hashed(b, hashes[k][1]);
      const int32_t* inew = spelled_to_id.find_hashed(joined[k], hashes[k][2]);
      auto unknown = [&](const std::string& t) {
        SFTGO_FAIL_HINT(ErrorKind::kTokenizer, "the file is corrupt or its vocab and merges do not belong together",
                        path, ": model.merges[", rank, "] \"", a, " ", b, "\" names token \"", t,
                        "\" that is not in model.vocab");
      };
      if (!ia) unknown(a);
      if (!ib) unknown(b);
      if (!inew) unknown(joined[k]);
      merges_.insert(*ia, *ib, {static_cast<uint32_t>(rank), *inew});
    }
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t* id = bytes_to_id_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  if (word.size() > kMaxCachedWord) {
    merge_word(word, out);
    return;
  }
  WordCache& cache = thread_cache(instance_id_);
  const uint64_t h = hash_bytes(word);
  if (const auto* hit = cache.index.find_hashed(word, h)) {
    out.insert(out.end(), cache.ids.begin() + hit->first, cache.ids.begin() + hit->first + hit->second);
    return;
  }
  const size_t before = out.size();
  merge_word(word, out);
  if (cache.index.size() >= kMaxCacheEntries) {
    cache.index.clear();
    cache.ids.clear();
  }
  const auto offset = static_cast<uint32_t>(cache.ids.size());
  cache.ids.insert(cache.ids.end(), out.begin() + before, out.end());
  cache.index.insert_hashed(word, h, {offset, static_cast<uint32_t>(out.size() - before)});
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> ids;
  ids.clear();
  bool last_unk = false;
  for (char c : word) {
    int32_t id = byte_id_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      ids.push_back(id);
      last_unk = false;
    } else if (unk_id_ >= 0 && !(fuse_unk_ && last_unk)) {
      // HF: a byte with no token becomes unk (or is dropped when there is no unk token).
      ids.push_back(unk_id_);
      last_unk = true;
    }
  }
  if (ids.size() <= kSmallWord)
    merge_small(ids);
  else
    merge_large(ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

// Repeatedly applies the lowest-rank merge, leftmost first on ties: what HF's heap yields.
void BpeModel::merge_small(std::vector<int32_t>& ids) const {
  size_t n = ids.size();
  if (n < 2) return;
  uint32_t ranks[kSmallWord];
  int32_t merged[kSmallWord];
  auto lookup = [&](size_t i) {
    const PairMap::Value* m = merges_.find(ids[i], ids[i + 1]);
    ranks[i] = m ? m->rank : kNoMerge;
    merged[i] = m ? m->new_id : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) lookup(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (ranks[i] < ranks[best]) best = i;
    if (ranks[best] == kNoMerge) break;
    ids[best] = merged[best];
    // Close the gap left by the right symbol.
    for (size_t i = best + 1; i + 1 < n; ++i) {
      ids[i] = ids[i + 1];
      ranks[i] = ranks[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) lookup(best - 1);
    if (best + 1 < n) lookup(best);
  }
  ids.resize(n);
}

// The same merge order for long words with a heap and a linked list: O(n log n).
void BpeModel::merge_large(std::vector<int32_t>& ids) const {
  const size_t n = ids.size();
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  // (rank << 32 | position): smallest rank first, then leftmost.
  std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const PairMap::Value* m = merges_.find(ids[pos], ids[next[pos]]))
      heap.push((uint64_t{m->rank} << 32) | static_cast<uint32_t>(pos));
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const uint64_t top = heap.top();
    heap.pop();
    const auto rank = static_cast<uint32_t>(top >> 32);
    const auto pos = static_cast<int32_t>(top & 0xFFFFFFFF);
    if (!alive[pos] || next[pos] < 0) continue;
    const int32_t right = next[pos];
    const PairMap::Value* m = merges_.find(ids[pos], ids[right]);
    if (!m || m->rank != rank) continue;  // stale entry: the pair here has changed since
    ids[pos] = m->new_id;
    alive[right] = 0;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    push(prev[pos]);
    push(pos);
  }
  size_t w = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) ids[w++] = ids[i];
  ids.resize(w);
}

}  // namespace sftgo::tok
