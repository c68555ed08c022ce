// safetensors writer: single files and sharded, crash-safe directories (temporary sibling, fsync,
// rename); see include/sftgo/io/safetensors.h.
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"
#include "detail.h"

namespace sftgo::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Writes all of [data, data+n) to fd, retrying short writes.
void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    SFTGO_CHECK(w > 0, ErrorKind::kIo, path, ": write failed: ", detail::errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);  // best effort: some filesystems refuse fsync on directories
    ::close(fd);
  }
}

// rm -rf with POSIX calls. std::filesystem::remove_all is avoided on purpose: libtorch.so exports
// its own (older libstdc++) std::filesystem symbols, which interpose on ours in any binary linking
// LibTorch, and its remove_all crashes there.
void remove_tree(const fs::path& p) {
  ::nftw(
      p.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path) == 0 ? 0 : 0; }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::string tmp_suffix() { return ".tmp-" + std::to_string(::getpid()); }

// Writes one safetensors file to exactly `path` (no rename), fsync'ed.
void write_file_direct(const std::string& path, const std::vector<TensorSource>& tensors, const Metadata& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    SFTGO_CHECK(t.name != "__metadata__" && !t.name.empty(), ErrorKind::kFormat, path, ": invalid tensor name '",
                t.name, "'");
    SFTGO_CHECK(names.insert(t.name).second, ErrorKind::kFormat, path, ": duplicate tensor '", t.name, "'");
    uint64_t n = t.nbytes();
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SFTGO_CHECK(fd >= 0, ErrorKind::kIo, path, ": cannot create: ", detail::errno_text());
  try {
    std::array<unsigned char, 8> len{};
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    write_all(fd, len.data(), len.size(), path);
    write_all(fd, text.data(), text.size(), path);
    for (const auto& t : tensors) {
      uint64_t nb = t.nbytes();
      if (nb == 0) continue;
      SFTGO_CHECK(static_cast<bool>(t.bytes), ErrorKind::kInternal, path, ": tensor '", t.name, "' has no data");
      std::shared_ptr<const std::byte> bytes = t.bytes();
      SFTGO_CHECK(bytes != nullptr, ErrorKind::kInternal, path, ": tensor '", t.name, "' returned no data");
      write_all(fd, bytes.get(), nb, path + " (tensor '" + t.name + "')");
    }
    SFTGO_CHECK(::fsync(fd) == 0, ErrorKind::kIo, path, ": fsync failed: ", detail::errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  SFTGO_CHECK(::close(fd) == 0, ErrorKind::kIo, path, ": close failed: ", detail::errno_text());
}

std::string shard_name(const std::string& base, size_t k, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "-%05zu-of-%05zu.safetensors", k, n);
  return base + buf;
}

void write_text_file(const fs::path& path, const std::string& contents) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SFTGO_CHECK(fd >= 0, ErrorKind::kIo, path.string(), ": cannot create: ", detail::errno_text());
  try {
    write_all(fd, contents.data(), contents.size(), path.string());
    SFTGO_CHECK(::fsync(fd) == 0, ErrorKind::kIo, path.string(), ": fsync failed: ", detail::errno_text());
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

}  // namespace

// ---- Writing -----------------------------------------------------------------------------------

uint64_t TensorSource::nbytes() const {
  auto n = detail::checked_numel(shape);
  SFTGO_CHECK(n.has_value(), ErrorKind::kFormat, "tensor '", name, "': invalid shape ", detail::shape_str(shape));
  return *n * dtype_size(dtype);
}

TensorSource TensorSource::borrow(std::string name, DType dtype, std::vector<int64_t> shape, const void* data) {
  TensorSource t{std::move(name), dtype, std::move(shape), {}};
  auto* p = static_cast<const std::byte*>(data);
  t.bytes = [p] { return std::shared_ptr<const std::byte>(std::shared_ptr<const std::byte>(), p); };
  return t;
}

void write_safetensors(const std::string& path, const std::vector<TensorSource>& tensors, const Metadata& metadata) {
  const std::string tmp = path + tmp_suffix();
  write_file_direct(tmp, tensors, metadata);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    SFTGO_FAIL(ErrorKind::kIo, path, ": rename from ", tmp, " failed: ", std::strerror(err));
  }
  fsync_dir(fs::path(path).parent_path());
}

std::vector<std::string> write_sharded_safetensors(const std::string& dir, const std::vector<TensorSource>& tensors,
                                                   const ShardedWriteOptions& options,
                                                   const std::map<std::string, std::string>& extra_files) {
  SFTGO_CHECK(options.max_shard_bytes > 0, ErrorKind::kUsage, "max_shard_bytes must be positive");
  fs::path target = fs::path(dir);
  if (target.filename().empty()) target = target.parent_path();  // "out/" -> "out"
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  const fs::path tmp = fs::path(target.string() + tmp_suffix());
  remove_tree(tmp);
  SFTGO_CHECK(fs::create_directory(tmp, ec), ErrorKind::kIo, tmp.string(), ": cannot create directory: ", ec.message());

  // Greedy packing in order, as HF's split does; an oversized tensor goes alone into its shard.
  std::vector<std::vector<size_t>> shards;
  uint64_t cur = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t nb = tensors[i].nbytes();
    if (shards.empty() || (cur + nb > options.max_shard_bytes && cur > 0)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += nb;
  }
  if (shards.empty()) shards.emplace_back();

  std::vector<std::string> names;
  try {
    uint64_t total = 0;
    json weight_map = json::object();
    for (size_t k = 0; k < shards.size(); ++k) {
      std::string name =
          shards.size() == 1 ? options.base_name + ".safetensors" : shard_name(options.base_name, k + 1, shards.size());
      std::vector<TensorSource> part;
      for (size_t i : shards[k]) {
        part.push_back(tensors[i]);
        total += tensors[i].nbytes();
        weight_map[tensors[i].name] = name;
      }
      write_file_direct((tmp / name).string(), part, options.metadata);
      names.push_back(name);
    }
    if (shards.size() > 1) {
      json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      write_text_file(tmp / (options.base_name + ".safetensors.index.json"), index.dump(2) + "\n");
    }
    for (const auto& [name, contents] : extra_files) write_text_file(tmp / name, contents);
    fsync_dir(tmp);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  // Swap into place: rename(2) cannot replace a non-empty directory, so the old one is moved aside
  // first; between the two renames a crash leaves <dir>.old-<pid> holding the previous checkpoint.
  const fs::path old = fs::path(target.string() + ".old-" + std::to_string(::getpid()));
  bool had_old = fs::exists(target, ec);
  if (had_old) {
    remove_tree(old);
    fs::rename(target, old, ec);
    SFTGO_CHECK(!ec, ErrorKind::kIo, target.string(), ": cannot move the previous checkpoint aside: ", ec.message());
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ec2;
    if (had_old) fs::rename(old, target, ec2);
    SFTGO_FAIL(ErrorKind::kIo, target.string(), ": cannot rename ", tmp.string(), " into place: ", ec.message());
  }
  fsync_dir(parent);
  if (had_old) remove_tree(old);
  return names;
}

}  // namespace sftgo::io
