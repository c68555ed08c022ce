// prepare_dataset and its on-disk cache.
#include "sftgo/data/dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "sftgo/core/cache_file.h"
#include "sftgo/core/error.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

namespace sftgo::data {
namespace {

// Payload format of the data cache inside core's envelope (sftgo/core/cache_file.h). 2: the
// envelope, and hash64 for the key and tokenizer hash (old keys would not match anyway).
constexpr uint32_t kCacheVersion = 2;

class Writer {
 public:
  template <typename T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void put_bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_ += s;
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

struct CacheCorrupt {
  std::string what;
};

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T get() {
    T v;
    get_bytes(&v, sizeof(T));
    return v;
  }
  void get_bytes(void* dst, size_t n) {
    if (n > n_ - pos_) throw CacheCorrupt{"payload ends early"};
    std::memcpy(dst, p_ + pos_, n);
    pos_ += n;
  }
  std::string get_string() {
    uint64_t n = get<uint64_t>();
    if (n > n_ - pos_) throw CacheCorrupt{"string runs past the end"};
    std::string s(p_ + pos_, n);
    pos_ += n;
    return s;
  }
  bool done() const { return pos_ == n_; }

 private:
  const char* p_;
  size_t n_;
  size_t pos_ = 0;
};

void add_stats(DataStats& s, const TokenizedExample& ex) {
  ++s.examples;
  s.tokens += static_cast<int64_t>(ex.ids.size());
  s.trained_tokens += ex.num_trained();
  s.max_len = std::max<int64_t>(s.max_len, static_cast<int64_t>(ex.ids.size()));
}

uint64_t cache_key(const DataOptions& opts, const Tokenizer& tok) {
  namespace fs = std::filesystem;
  std::string k = detail::concat("v", kCacheVersion, "|", fs::absolute(opts.path).string(), "|");
  struct stat st {};
  SFTGO_CHECK_HINT(::stat(opts.path.c_str(), &st) == 0, ErrorKind::kIo, "check the data path in the config",
                   "cannot stat data file ", opts.path);
  k += detail::concat(st.st_size, "|", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, "|");
  // The tokenizer by content: the same path may hold another tokenizer tomorrow.
  fs::path tp = tok.source_path();
  fs::path json = fs::is_directory(tp) ? tp / "tokenizer.json" : tp;
  fs::path config = json.parent_path() / "tokenizer_config.json";
  uint64_t th = 0;
  if (fs::exists(json)) {
    std::string bytes = read_file(json.string());
    th = hash64(bytes.data(), bytes.size());
  }
  if (fs::exists(config)) {
    std::string bytes = read_file(config.string());
    th = hash64(bytes.data(), bytes.size(), th);
  }
  k += detail::concat(th, "|", data_format_name(opts.format), "|", template_kind_name(opts.template_kind), "|",
                      opts.max_seq_len, "|", truncation_name(opts.truncation), "|",
                      opts.on_bad_record == OnBadRecord::kStop ? "stop" : "skip", "|",
                      opts.system_prompt ? "S" + *opts.system_prompt : std::string("-"));
  return hash64(k.data(), k.size());
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::vector<int64_t> PreparedDataset::lengths() const {
  std::vector<int64_t> out(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) out[i] = static_cast<int64_t>(examples[i].ids.size());
  return out;
}

std::string cache_path_for(const DataOptions& opts, const Tokenizer& tok) {
  if (opts.cache_dir.empty()) return "";
  return (std::filesystem::path(opts.cache_dir) / ("data-" + hex(cache_key(opts, tok)) + ".bin")).string();
}

void save_dataset_cache(const std::string& path, uint64_t key, const PreparedDataset& ds) {
  Writer w;
  const DataStats& s = ds.stats;
  for (int64_t v : {s.records, s.bad_records, s.examples, s.truncated, s.dropped_too_long, s.dropped_no_trained,
                    s.tokens, s.trained_tokens, s.max_len})
    w.put<int64_t>(v);
  w.put_string(ds.data_format);
  // Source file names once; examples refer to them by index.
  std::vector<std::string> files;
  std::vector<uint32_t> file_of(ds.examples.size());
  for (size_t i = 0; i < ds.examples.size(); ++i) {
    const std::string& f = ds.examples[i].source.file;
    auto it = std::find(files.begin(), files.end(), f);
    if (it == files.end()) it = files.insert(files.end(), f);
    file_of[i] = static_cast<uint32_t>(it - files.begin());
  }
  w.put<uint32_t>(static_cast<uint32_t>(files.size()));
  for (const auto& f : files) w.put_string(f);
  w.put<uint64_t>(ds.examples.size());
  std::vector<uint8_t> trained;
  for (size_t i = 0; i < ds.examples.size(); ++i) {
    const TokenizedExample& ex = ds.examples[i];
    w.put<uint32_t>(static_cast<uint32_t>(ex.ids.size()));
    w.put_bytes(ex.ids.data(), ex.ids.size() * sizeof(int32_t));
    // Labels are either the id or ignored: one flag byte per token halves the label storage.
    trained.resize(ex.ids.size());
    for (size_t t = 0; t < ex.ids.size(); ++t) trained[t] = ex.labels[t] != kIgnoreLabel;
    w.put_bytes(trained.data(), trained.size());
    w.put<uint32_t>(file_of[i]);
    w.put<int64_t>(ex.source.line);
    w.put<uint8_t>(ex.truncated ? 1 : 0);
  }
  write_cache_file(path, CacheKind::kDataset, kCacheVersion, key, w.str());
}

std::optional<PreparedDataset> load_dataset_cache(const std::string& path, uint64_t key) {
  const std::optional<CacheFile> file = read_cache_file(path, CacheKind::kDataset, kCacheVersion, key);
  if (!file) return std::nullopt;
  const std::string_view payload = file->payload();
  const size_t size = payload.size();
  try {
    Reader r(payload.data(), size);
    PreparedDataset ds;
    DataStats& s = ds.stats;
    for (int64_t* v : {&s.records, &s.bad_records, &s.examples, &s.truncated, &s.dropped_too_long,
                       &s.dropped_no_trained, &s.tokens, &s.trained_tokens, &s.max_len})
      *v = r.get<int64_t>();
    ds.data_format = r.get_string();
    uint32_t nfiles = r.get<uint32_t>();
    std::vector<std::string> files;
    for (uint32_t i = 0; i < nfiles; ++i) files.push_back(r.get_string());
    uint64_t n = r.get<uint64_t>();
    if (n > size) throw CacheCorrupt{"implausible example count"};
    ds.examples.resize(n);
    std::vector<uint8_t> trained;
    for (uint64_t i = 0; i < n; ++i) {
      TokenizedExample& ex = ds.examples[i];
      uint32_t len = r.get<uint32_t>();
      if (len > size) throw CacheCorrupt{"implausible example length"};
      ex.ids.resize(len);
      r.get_bytes(ex.ids.data(), len * sizeof(int32_t));
      trained.resize(len);
      r.get_bytes(trained.data(), len);
      ex.labels.resize(len);
      for (uint32_t t = 0; t < len; ++t) ex.labels[t] = trained[t] ? ex.ids[t] : kIgnoreLabel;
      uint32_t f = r.get<uint32_t>();
      if (f >= files.size()) throw CacheCorrupt{"bad source file index"};
      ex.source = {files[f], r.get<int64_t>()};
      ex.truncated = r.get<uint8_t>() != 0;
      ex.index = static_cast<int64_t>(i);
    }
    if (!r.done()) throw CacheCorrupt{"trailing bytes"};
    if (static_cast<uint64_t>(s.examples) != n) throw CacheCorrupt{"stats disagree with the examples"};
    ds.from_cache = true;
    ds.cache_path = path;
    return ds;
  } catch (const CacheCorrupt& c) {
    warn_cache_rejected(path, CacheKind::kDataset, c.what);
    return std::nullopt;
  }
}

PreparedDataset prepare_dataset(const DataOptions& opts, const Tokenizer& tok) {
  SFTGO_CHECK(opts.max_seq_len > 0, ErrorKind::kConfig, "data.max_seq_len must be positive, got ", opts.max_seq_len);
  std::string cache_path;
  uint64_t key = 0;
  if (!opts.cache_dir.empty()) {
    key = cache_key(opts, tok);
    cache_path = (std::filesystem::path(opts.cache_dir) / ("data-" + hex(key) + ".bin")).string();
    if (auto cached = load_dataset_cache(cache_path, key)) {
      log_info("data: {} examples from cache {}", cached->examples.size(), cache_path);
      return std::move(*cached);
    }
  }

  PreparedDataset ds;
  DataStats& s = ds.stats;
  int64_t template_bad = 0;
  ReadStats rs = read_conversations(opts.path, opts.format, opts.on_bad_record, [&](Conversation&& conv) {
    TokenizedExample ex;
    try {
      ex = apply_template(conv, tok, opts.template_kind, opts.system_prompt);
    } catch (const Error& e) {
      if (opts.on_bad_record == OnBadRecord::kStop || e.kind() != ErrorKind::kData) throw;
      if (template_bad++ < static_cast<int64_t>(ReadStats::kMaxBadReasons)) log_warn("skipping: {}", e.message());
      return;
    }
    switch (fit_to_length(ex, opts.max_seq_len, opts.truncation)) {
      case FitResult::kDroppedTooLong: ++s.dropped_too_long; return;
      case FitResult::kDroppedNoTrained: ++s.dropped_no_trained; return;
      case FitResult::kTruncated: ++s.truncated; break;
      case FitResult::kKept: break;
    }
    ex.index = static_cast<int64_t>(ds.examples.size());
    add_stats(s, ex);
    ds.examples.push_back(std::move(ex));
  });
  s.records = rs.records;
  s.bad_records = rs.bad + template_bad;
  ds.data_format = data_format_name(rs.format);
  if (s.bad_records > 0) log_warn("data: skipped {} bad records in {}", s.bad_records, opts.path);
  SFTGO_CHECK_HINT(!ds.examples.empty(), ErrorKind::kData, "check the file format, max_seq_len and truncation policy",
                   "no usable examples in ", opts.path, " (", s.records, " records, ",
                   s.dropped_too_long + s.dropped_no_trained, " dropped, ", s.bad_records, " bad)");
  if (!cache_path.empty()) {
    save_dataset_cache(cache_path, key, ds);
    ds.cache_path = cache_path;
  }
  return ds;
}

}  // namespace sftgo::data
