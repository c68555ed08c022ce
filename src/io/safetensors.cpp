// safetensors reader (the writer is safetensors_write.cpp); see include/sftgo/io/safetensors.h for the
// format and guarantees.
#include "sftgo/io/safetensors.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "sftgo/core/error.h"
#include "detail.h"

namespace sftgo::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using detail::checked_numel;
using detail::errno_text;
using detail::shape_str;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
}};

const DTypeInfo& info(DType dtype) {
  for (const auto& i : kDTypes)
    if (i.dtype == dtype) return i;
  SFTGO_FAIL(ErrorKind::kInternal, "unknown DType ", static_cast<int>(dtype));
}

// Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF); returns the offset of the first
// bad byte or npos. The JSON parser also rejects bad UTF-8 inside strings, but this gives a clear
// message with an offset for any byte of the header.
size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
      len = 2;
    else if (c == 0xE0) {
      len = 3;
      lo = 0xA0;
    } else if (c >= 0xE1 && c <= 0xEC)
      len = 3;
    else if (c == 0xED) {
      len = 3;
      hi = 0x9F;
    } else if (c >= 0xEE && c <= 0xEF)
      len = 3;
    else if (c == 0xF0) {
      len = 4;
      lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3)
      len = 4;
    else if (c == 0xF4) {
      len = 4;
      hi = 0x8F;
    } else
      return i;
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Parses with duplicate-key detection: nlohmann silently keeps the last duplicate, the spec's
// reference implementation rejects them, and a duplicate could hide a tensor from one reader.
json parse_json_no_duplicates(std::string_view text, const std::string& label) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: keys.emplace_back(); break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default: break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, label, ": header is not valid JSON: ", e.what());
  }
  SFTGO_CHECK(duplicate.empty(), ErrorKind::kFormat, label, ": header has duplicate key '", duplicate, "'");
  return j;
}

}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
const char* dtype_name(DType dtype) { return info(dtype).name; }
std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& i : kDTypes)
    if (name == i.name) return i.dtype;
  return std::nullopt;
}

int64_t TensorEntry::numel() const { return static_cast<int64_t>(checked_numel(shape).value_or(0)); }
int64_t TensorView::numel() const { return static_cast<int64_t>(checked_numel(shape).value_or(0)); }

namespace {

// One tensor's header entry: dtype, shape and data_offsets, each checked against the data section.
TensorEntry parse_entry(const std::string& name, const json& v, uint64_t data_size, const std::string& label) {
  SFTGO_CHECK(v.is_object(), ErrorKind::kFormat, label, ": tensor '", name, "': entry is not an object");
  TensorEntry e;
  e.name = name;
  auto d = v.find("dtype");
  SFTGO_CHECK(d != v.end() && d->is_string(), ErrorKind::kFormat, label, ": tensor '", name,
              "': missing or non-string dtype");
  auto dt = parse_dtype(d->get<std::string>());
  SFTGO_CHECK(dt.has_value(), ErrorKind::kFormat, label, ": tensor '", name, "': unknown dtype '",
              d->get<std::string>(), "'");
  e.dtype = *dt;
  auto s = v.find("shape");
  SFTGO_CHECK(s != v.end() && s->is_array(), ErrorKind::kFormat, label, ": tensor '", name,
              "': missing or non-array shape");
  for (const auto& dim : *s) {
    SFTGO_CHECK(dim.is_number_unsigned(), ErrorKind::kFormat, label, ": tensor '", name,
                "': shape entries must be non-negative integers");
    uint64_t dv = dim.get<uint64_t>();
    SFTGO_CHECK(dv <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), ErrorKind::kFormat, label,
                ": tensor '", name, "': shape entry too large");
    e.shape.push_back(static_cast<int64_t>(dv));
  }
  auto o = v.find("data_offsets");
  SFTGO_CHECK(
      o != v.end() && o->is_array() && o->size() == 2 && (*o)[0].is_number_unsigned() && (*o)[1].is_number_unsigned(),
      ErrorKind::kFormat, label, ": tensor '", name, "': data_offsets must be an array of two non-negative integers");
  e.begin = (*o)[0].get<uint64_t>();
  e.end = (*o)[1].get<uint64_t>();
  SFTGO_CHECK(e.begin <= e.end, ErrorKind::kFormat, label, ": tensor '", name, "': data_offsets [", e.begin, ", ",
              e.end, "] are reversed");
  SFTGO_CHECK(e.end <= data_size, ErrorKind::kFormat, label, ": tensor '", name, "': data_offsets [", e.begin, ", ",
              e.end, "] are beyond the data section of ", data_size, " bytes");
  auto numel = checked_numel(e.shape);
  uint64_t esz = dtype_size(e.dtype);
  SFTGO_CHECK(numel && *numel <= std::numeric_limits<uint64_t>::max() / esz, ErrorKind::kFormat, label, ": tensor '",
              name, "': shape ", shape_str(e.shape), " overflows");
  SFTGO_CHECK(*numel * esz == e.nbytes(), ErrorKind::kFormat, label, ": tensor '", name, "': ", dtype_name(e.dtype),
              " ", shape_str(e.shape), " needs ", *numel * esz, " bytes but data_offsets span ", e.nbytes());
  return e;
}

void check_tiling(std::vector<TensorEntry>& tensors, uint64_t data_size, const std::string& label) {
  // No overlaps and no holes: sorted by offset, each tensor must start where the previous ended and
  // the last must end at the end of the file (the spec forbids unindexed bytes).
  std::sort(tensors.begin(), tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& e : tensors) {
    SFTGO_CHECK(e.begin >= cursor, ErrorKind::kFormat, label, ": tensor '", e.name, "': data_offsets [", e.begin, ", ",
                e.end, "] overlap the previous tensor (which ends at ", cursor, ")");
    SFTGO_CHECK(e.begin == cursor, ErrorKind::kFormat, label, ": tensor '", e.name, "': hole of ", e.begin - cursor,
                " unindexed bytes before it (the spec forbids holes)");
    cursor = e.end;
  }
  SFTGO_CHECK(cursor == data_size, ErrorKind::kFormat, label, ": data section has ", data_size,
              " bytes but the tensors cover ", cursor, " (trailing unindexed bytes or truncated file)");
}

}  // namespace

ParsedHeader parse_safetensors(std::span<const std::byte> bytes, const std::string& label) {
  const uint64_t size = bytes.size();
  SFTGO_CHECK_HINT(size >= 8, ErrorKind::kFormat, "the file is truncated or not a safetensors file", label,
                   ": file has ", size, " bytes, fewer than the 8-byte header length");
  const uint64_t n = read_u64_le(bytes.data());
  SFTGO_CHECK(n <= kMaxHeaderBytes, ErrorKind::kFormat, label, ": header length ", n, " exceeds the limit of ",
              kMaxHeaderBytes, " bytes");
  SFTGO_CHECK_HINT(n <= size - 8, ErrorKind::kFormat, "the file is truncated or not a safetensors file", label,
                   ": header length ", n, " is beyond the file size ", size, " - 8");
  SFTGO_CHECK(n >= 2, ErrorKind::kFormat, label, ": header of ", n, " bytes is too short for a JSON object");
  std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), n);
  SFTGO_CHECK(text.front() == '{', ErrorKind::kFormat, label, ": header does not start with '{'");
  size_t bad = first_invalid_utf8(text);
  SFTGO_CHECK(bad == std::string_view::npos, ErrorKind::kFormat, label, ": header is not valid UTF-8 (byte ", bad,
              " of the header)");
  json j = parse_json_no_duplicates(text, label);
  SFTGO_CHECK(j.is_object(), ErrorKind::kFormat, label, ": header is not a JSON object");

  ParsedHeader out;
  out.data_start = 8 + n;
  const uint64_t data_size = size - out.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      SFTGO_CHECK(v.is_object(), ErrorKind::kFormat, label, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        SFTGO_CHECK(m.value().is_string(), ErrorKind::kFormat, label, ": __metadata__ value for '", m.key(),
                    "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    out.tensors.push_back(parse_entry(name, v, data_size, label));
  }
  check_tiling(out.tensors, data_size, label);
  return out;
}

// ---- SafetensorsFile -------------------------------------------------------------------------

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SFTGO_CHECK_HINT(fd >= 0, ErrorKind::kIo, "check the model path", path, ": cannot open: ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    SFTGO_FAIL(ErrorKind::kIo, path, ": cannot stat: ", errno_text());
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_size_ = static_cast<size_t>(st.st_size);
  if (f->map_size_ > 0) {
    void* p = ::mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    SFTGO_CHECK(p != MAP_FAILED, ErrorKind::kIo, path, ": mmap failed: ", errno_text());
    f->map_ = p;
  } else {
    ::close(fd);
  }
  auto* base = static_cast<const std::byte*>(f->map_);
  ParsedHeader h = parse_safetensors({base, f->map_size_}, path);
  f->metadata_ = std::move(h.metadata);
  f->views_.reserve(h.tensors.size());
  for (auto& e : h.tensors) {
    TensorView v;
    v.name = std::move(e.name);
    v.dtype = e.dtype;
    v.shape = std::move(e.shape);
    v.data = base + h.data_start + e.begin;
    v.nbytes = e.end - e.begin;
    v.file = path;
    f->views_.push_back(std::move(v));
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  for (const auto& v : views_)
    if (v.name == name) return &v;
  return nullptr;
}

void SafetensorsFile::release_pages() const {
  if (map_) ::madvise(map_, map_size_, MADV_DONTNEED);
}

void SafetensorsFile::release_pages(const TensorView& v) const {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = (reinterpret_cast<uintptr_t>(v.data) + page - 1) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(v.data) + v.nbytes) & ~(page - 1);
  if (map_ && end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// ---- SafetensorsCheckpoint ---------------------------------------------------------------------

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path) {
  fs::path p(path);
  std::error_code ec;
  fs::path index_path;
  fs::path single_path;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json", ec))
      index_path = p / "model.safetensors.index.json";
    else if (fs::exists(p / "model.safetensors", ec))
      single_path = p / "model.safetensors";
    else
      SFTGO_FAIL_HINT(ErrorKind::kIo, "expected a Hugging Face model directory", path,
                      ": has neither model.safetensors.index.json nor model.safetensors");
  } else if (p.string().ends_with(".json")) {
    index_path = p;
  } else {
    single_path = p;
  }

  SafetensorsCheckpoint ck;
  if (!single_path.empty()) {
    ck.files_.push_back(SafetensorsFile::open(single_path.string()));
  } else {
    const std::string label = index_path.string();
    std::string text;
    {
      int fd = ::open(index_path.c_str(), O_RDONLY | O_CLOEXEC);
      SFTGO_CHECK(fd >= 0, ErrorKind::kIo, label, ": cannot open: ", errno_text());
      char buf[65536];
      for (;;) {
        ssize_t r = ::read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        text.append(buf, static_cast<size_t>(r));
      }
      ::close(fd);
    }
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      SFTGO_FAIL(ErrorKind::kFormat, label, ": not valid JSON: ", e.what());
    }
    SFTGO_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), ErrorKind::kFormat, label,
                ": missing \"weight_map\" object");
    // Shards in first-appearance order of the weight map, each opened once.
    std::vector<std::string> shard_names;
    std::map<std::string, std::set<std::string>> expected;  // shard -> tensors the index puts there
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      SFTGO_CHECK(it.value().is_string(), ErrorKind::kFormat, label, ": tensor '", it.key(),
                  "': weight_map value is not a file name");
      std::string shard = it.value().get<std::string>();
      SFTGO_CHECK(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(), ErrorKind::kFormat, label,
                  ": tensor '", it.key(), "': shard name '", shard, "' must be a plain file name");
      if (!expected.count(shard)) shard_names.push_back(shard);
      expected[shard].insert(it.key());
    }
    std::sort(shard_names.begin(), shard_names.end());
    for (const auto& shard : shard_names) {
      auto f = SafetensorsFile::open((index_path.parent_path() / shard).string());
      auto& want = expected[shard];
      for (const auto& v : f->tensors())
        SFTGO_CHECK(want.count(v.name), ErrorKind::kFormat, f->path(), ": tensor '", v.name,
                    "' is in the shard but the index does not list it there (", label, ")");
      for (const auto& name : want)
        SFTGO_CHECK(f->find(name) != nullptr, ErrorKind::kFormat, label, ": tensor '", name, "' is listed in shard ",
                    shard, " but that file does not contain it");
      ck.files_.push_back(std::move(f));
    }
  }
  for (const auto& f : ck.files_)
    for (const auto& v : f->tensors())
      SFTGO_CHECK(ck.index_.emplace(v.name, &v).second, ErrorKind::kFormat, f->path(), ": tensor '", v.name,
                  "' appears in more than one shard");
  return ck;
}

std::vector<const TensorView*> SafetensorsCheckpoint::tensors() const {
  std::vector<const TensorView*> out;
  for (const auto& f : files_)
    for (const auto& v : f->tensors()) out.push_back(&v);
  return out;
}

const TensorView* SafetensorsCheckpoint::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const Metadata& SafetensorsCheckpoint::metadata() const {
  static const Metadata kEmpty;
  return files_.empty() ? kEmpty : files_.front()->metadata();
}

}  // namespace sftgo::io
