// safetensors reading and writing (https://github.com/huggingface/safetensors, "Format").
// No LibTorch here: io knows bytes, dtypes and shapes, nothing about models.
//
// File layout: [u64 little-endian N][N bytes UTF-8 JSON header][data section]. The header maps
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// section) plus an optional "__metadata__" string->string map. The spec requires the data section to
// be fully indexed (no holes, no overlaps): we enforce that, so a file cannot smuggle extra bytes.
//
// Reading is zero-copy: files are mmap'ed read-only and TensorView points into the mapping, so a
// loader can copy straight from the page cache into its own buffers (one copy of the weights).
//
// Writing is crash-safe: a file is written under a temporary name, fsync'ed and renamed; a sharded
// checkpoint is written into a temporary sibling directory which is renamed into place at the end
// (see write_sharded_safetensors), so an interrupted save never leaves a half checkpoint behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sftgo::io {

enum class DType { kBool, kU8, kI8, kF8E5M2, kF8E4M3, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64 };

size_t dtype_size(DType dtype);       // bytes per element
const char* dtype_name(DType dtype);  // "F32", "BF16", ... as spelled in the header
std::optional<DType> parse_dtype(std::string_view name);

// Largest header we accept: real checkpoints have headers of ~100 KB; this stops header bombs.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

using Metadata = std::map<std::string, std::string>;

// One tensor as described by a header: offsets are relative to the start of the data section.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct ParsedHeader {
  uint64_t data_start = 0;  // byte offset of the data section in the file (8 + N)
  Metadata metadata;
  std::vector<TensorEntry> tensors;  // in data order (sorted by begin offset)
};

// Validates the 8-byte length prefix and the JSON header of a complete file image `bytes` (the
// data section included, so offsets are checked against its real size). Throws sftgo::Error
// (kFormat) naming `file_label` and, where there is one, the tensor. Exposed for the fuzzer.
ParsedHeader parse_safetensors(std::span<const std::byte> bytes, const std::string& file_label);

// A zero-copy view of one tensor inside a mapped file; valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // the file it lives in, for error messages
  int64_t numel() const;
};

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const Metadata& metadata() const { return metadata_; }
  const std::vector<TensorView>& tensors() const { return views_; }
  const TensorView* find(std::string_view name) const;  // nullptr when absent
  // Tells the kernel the pages are no longer needed (after a loader copied them out).
  void release_pages() const;
  // Same for one tensor's bytes (whole pages inside it), so a loader's RSS stays ~1x the weights
  // instead of weights + one mapped shard.
  void release_pages(const TensorView& view) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  Metadata metadata_;
  std::vector<TensorView> views_;
};

// A checkpoint: one file, or the shards listed by a model.safetensors.index.json.
// `path` may be a .safetensors file, an *.index.json file, or a directory holding either
// model.safetensors.index.json (preferred) or model.safetensors.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::string& path);

  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Every tensor in every shard, in shard order then data order.
  std::vector<const TensorView*> tensors() const;
  const TensorView* find(std::string_view name) const;  // nullptr when absent
  size_t size() const { return index_.size(); }
  const Metadata& metadata() const;  // the first shard's __metadata__

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> index_;
};

// ---- Writing ----------------------------------------------------------------------------------

// A tensor to write. `bytes` is called once, just before the tensor's data is written, and must
// return exactly nbytes() bytes kept alive by the returned pointer: callers can stage one tensor at
// a time (e.g. device -> host) instead of materialising the whole checkpoint in memory.
struct TensorSource {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::function<std::shared_ptr<const std::byte>()> bytes;

  uint64_t nbytes() const;
  // Non-owning: `data` must outlive the write.
  static TensorSource borrow(std::string name, DType dtype, std::vector<int64_t> shape, const void* data);
};

// Writes one file atomically: <path>.tmp-<pid> is written, fsync'ed, renamed to `path`, and the
// directory is fsync'ed. Throws sftgo::Error(kIo/kFormat) naming the file (and tensor).
void write_safetensors(const std::string& path, const std::vector<TensorSource>& tensors,
                       const Metadata& metadata = {});

struct ShardedWriteOptions {
  uint64_t max_shard_bytes = 5'000'000'000;  // HF's default "5GB"
  std::string base_name = "model";           // model.safetensors / model-0000k-of-0000n.safetensors
  Metadata metadata;                         // written into every shard's __metadata__
};

// Writes tensors into directory `dir` as one file (<base>.safetensors) when they fit in one shard,
// else as <base>-0000k-of-0000n.safetensors plus <base>.safetensors.index.json (HF layout).
// Tensors are packed in the given order; a tensor bigger than the limit gets a shard of its own.
// Atomicity: everything is written into the fresh sibling directory <dir>.tmp-<pid>; `extra_files`
// (name -> contents, e.g. config.json) are written there too; then any existing `dir` is moved
// aside, the temp dir renamed to `dir`, and the old one removed. A crash leaves either the old
// checkpoint or the new one at `dir`, plus possibly a stray *.tmp-* / *.old-* sibling.
// Returns the shard file names (relative to dir).
std::vector<std::string> write_sharded_safetensors(const std::string& dir, const std::vector<TensorSource>& tensors,
                                                   const ShardedWriteOptions& options = {},
                                                   const std::map<std::string, std::string>& extra_files = {});

}  // namespace sftgo::io
