// Open-addressing hash maps for the tokenizer's hot lookups (vocab by bytes, merges by id pair,
// the per-thread word cache). std::unordered_map allocates a node per entry and hashes slowly.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace sftgo::tok {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// 8 bytes a step; good enough spread for short keys, never zero (zero marks an empty slot).
inline uint64_t hash_bytes(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ mix64(w)) * 0x9E3779B97F4A7C15ULL;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ mix64(w ^ (uint64_t{n} << 56))) * 0x9E3779B97F4A7C15ULL;
  }
  h = mix64(h);
  return h == 0 ? 1 : h;
}

inline size_t table_capacity_for(size_t n) {
  size_t cap = 16;
  while (cap * 5 < n * 8) cap <<= 1;  // load factor <= 0.625
  return cap;
}

// string -> V; keys live in one arena. Inserting an existing key overwrites its value.
template <typename V>
class StringMap {
 public:
  void reserve(size_t n) { rehash(table_capacity_for(n)); }
  size_t size() const { return size_; }

  const V* find(std::string_view key) const { return find_hashed(key, hash_bytes(key)); }
  // Starts loading the slot for hash h, so a later find_hashed does not stall on memory.
  void prefetch(uint64_t h) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[h & mask_]);
  }
  const V* find_hashed(std::string_view key, uint64_t h) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), s.len) == 0)
        return &s.value;
    }
  }
  // Returns true when the key was new.
  bool insert(std::string_view key, V value) { return insert_hashed(key, hash_bytes(key), std::move(value)); }
  bool insert_hashed(std::string_view key, uint64_t h, V value) {
    if ((size_ + 1) * 8 > slots_.size() * 5) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.hash == 0) {
        s.hash = h;
        s.off = static_cast<uint32_t>(arena_.size());
        s.len = static_cast<uint32_t>(key.size());
        s.value = std::move(value);
        arena_.append(key);
        ++size_;
        return true;
      }
      if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), s.len) == 0) {
        s.value = std::move(value);
        return false;
      }
    }
  }
  void clear() {
    slots_.assign(slots_.size(), Slot{});
    arena_.clear();
    size_ = 0;
  }
  size_t arena_bytes() const { return arena_.size(); }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0;
    uint32_t len = 0;
    V value{};
  };
  void rehash(size_t cap) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (Slot& s : old) {
      if (s.hash == 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = std::move(s);
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0;
  size_t mask_ = 0;
};

// (left id, right id) -> (merge rank, merged id).
class PairMap {
 public:
  struct Value {
    uint32_t rank;
    int32_t new_id;
  };
  void reserve(size_t n) {
    slots_.assign(table_capacity_for(n), Slot{});
    mask_ = slots_.size() - 1;
  }
  static uint64_t key_of(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  const Value* find(int32_t a, int32_t b) const {
    if (slots_.empty()) return nullptr;
    const uint64_t k = key_of(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == kEmpty) return nullptr;
      if (s.key == k) return &s.value;
    }
  }
  // Later duplicates overwrite earlier ones, as HF's HashMap collect does.
  void insert(int32_t a, int32_t b, Value v) {
    if ((size_ + 1) * 8 > slots_.size() * 5) grow();
    const uint64_t k = key_of(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == kEmpty) {
        s.key = k;
        s.value = v;
        ++size_;
        return;
      }
      if (s.key == k) {
        s.value = v;
        return;
      }
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are < 2^31, so no real key is all ones
  struct Slot {
    uint64_t key = kEmpty;
    Value value{};
  };
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 16 : old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = mix64(s.key) & mask_;
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t size_ = 0;
  size_t mask_ = 0;
};

}  // namespace sftgo::tok
