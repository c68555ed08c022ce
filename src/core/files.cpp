#include "sftgo/core/files.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "sftgo/core/error.h"

namespace fs = std::filesystem;

namespace sftgo {

namespace {

// The nearest existing directory at or above `path` (the file itself may be gone after a failure).
fs::path existing_dir(const fs::path& path) {
  std::error_code ec;
  fs::path p = path;
  while (!p.empty() && !fs::is_directory(p, ec)) {
    if (p == p.parent_path()) break;
    p = p.parent_path();
  }
  return p.empty() ? fs::path(".") : p;
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1e9)
    std::snprintf(buf, sizeof buf, "%.1f GB", b / 1e9);
  else if (b >= 1e6)
    std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.0f KB", b / 1e3);
  return buf;
}

}  // namespace

std::string write_error_hint(int err, const std::string& path) {
  if (err == ENOSPC || err == EDQUOT) {
    const fs::path dir = existing_dir(path);
    struct statvfs st {};
    std::string free_text;
    if (::statvfs(dir.c_str(), &st) == 0)
      free_text = " (" + human_bytes(static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize)) +
                  " free on the filesystem holding " + dir.string() + ")";
    return "free disk space or write to a larger filesystem" + free_text;
  }
  if (err == EROFS || err == EACCES || err == EPERM) return "choose a directory this user can write to";
  if (err == EIO) return "the storage device reported an I/O error: check it (dmesg) before retrying";
  return "";
}

CheckedFile::CheckedFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(err, path_), path_, ": cannot create: ", std::strerror(err));
  }
}

CheckedFile::CheckedFile(std::string path, Through) : path_(std::move(path)), through_(true) {
  // No O_CREAT: if the device or FIFO went away since it was checked, fail rather than create a file.
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    SFTGO_FAIL(ErrorKind::kIo, path_, ": cannot open for writing: ", std::strerror(err));
  }
}

CheckedFile::~CheckedFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_ && !through_) ::unlink(path_.c_str());
}

size_t CheckedFile::write(const void* data, size_t n) noexcept {
  const char* p = static_cast<const char*>(data);
  size_t left = err_ == 0 ? n : 0;
  while (left > 0) {
    ssize_t w = ::write(fd_, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err_ = w < 0 ? errno : ENOSPC;  // a 0-byte write of a non-empty buffer: no room left
      break;
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  return n;
}

void CheckedFile::finish() {
  SFTGO_CHECK(!done_ && fd_ >= 0, ErrorKind::kInternal, path_, ": finish() called twice");
  // Delayed allocation (and NFS) can report ENOSPC/EIO only at fsync or close: both are checked.
  if (err_ == 0 && ::fsync(fd_) != 0 && errno != EINVAL) err_ = errno;  // EINVAL: /dev/null and the like
  if (::close(fd_) != 0 && err_ == 0) err_ = errno;
  fd_ = -1;
  if (err_ != 0 && through_) {
    done_ = true;
    SFTGO_FAIL(ErrorKind::kIo, path_, ": write failed: ", std::strerror(err_));
  }
  if (err_ != 0) {
    ::unlink(path_.c_str());
    done_ = true;  // already removed
    SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(err_, path_), path_, ": write failed: ", std::strerror(err_),
                    " (the partial file was removed)");
  }
  done_ = true;
}

OutputFile::OutputFile(const std::string& path) : path_(path) {
  SFTGO_CHECK(!path.empty(), ErrorKind::kUsage, "an output path is empty");
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // follows links: /dev/stdout -> the pipe or tty
  if (fs::exists(st)) {
    SFTGO_CHECK_HINT(!fs::is_directory(st), ErrorKind::kIo, "name a file, not a directory", path,
                     ": is a directory, expected a file to write");
    if (!fs::is_regular_file(st)) {
      through_ = true;  // a device, FIFO, socket or terminal: never replaced by a regular file
      file_ = std::make_unique<CheckedFile>(path, CheckedFile::Through{});
      return;
    }
  }
  // A link (or a chain of them) to a regular file: replace the file it points to, not the link.
  target_ = fs::is_symlink(fs::symlink_status(path, ec)) ? fs::weakly_canonical(path, ec).string() : path;
  if (ec || target_.empty()) target_ = path;
  file_ = std::make_unique<CheckedFile>(target_ + ".tmp." + std::to_string(::getpid()));
}

OutputFile::~OutputFile() = default;  // an unfinished CheckedFile removes its temporary file

void OutputFile::finish() {
  SFTGO_CHECK(!done_, ErrorKind::kInternal, path_, ": finish() called twice");
  done_ = true;
  file_->finish();  // throws naming the file with the OS reason; a temporary file is removed
  if (through_) return;
  if (::rename(file_->path().c_str(), target_.c_str()) != 0) {
    const int err = errno;
    ::unlink(file_->path().c_str());
    SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(err, target_), path_, ": cannot rename ", file_->path(),
                    " into place: ", std::strerror(err));
  }
}

void write_output_file(const std::string& path, std::string_view content) {
  const fs::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, write_error_hint(ec.value(), path), target.parent_path().string(),
                     ": cannot create the directory for ", target.filename().string(), ": ", ec.message());
  }
  OutputFile f(path);
  f.write(content);
  f.finish();
}

OutputStream::Buf::Buf(OutputFile* f) : f_(f) { setp(buf_, buf_ + sizeof buf_); }

int OutputStream::Buf::sync() {
  f_->write(std::string_view(pbase(), static_cast<size_t>(pptr() - pbase())));
  setp(buf_, buf_ + sizeof buf_);
  return 0;  // errors are kept by the file and reported by finish()
}

OutputStream::Buf::int_type OutputStream::Buf::overflow(int_type c) {
  sync();
  if (!traits_type::eq_int_type(c, traits_type::eof())) {
    *pptr() = traits_type::to_char_type(c);
    pbump(1);
  }
  return traits_type::not_eof(c);
}

OutputStream::OutputStream(const std::string& path)
    : std::ostream(nullptr), file_(std::make_unique<OutputFile>(path)), buf_(std::make_unique<Buf>(file_.get())) {
  rdbuf(buf_.get());
}

OutputStream::~OutputStream() { rdbuf(nullptr); }

void OutputStream::finish() {
  flush();
  file_->finish();
}

void ensure_writable_directory(const std::string& dir, const std::string& what) {
  SFTGO_CHECK(!dir.empty(), ErrorKind::kConfig, what, " is empty");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    SFTGO_FAIL_HINT(ErrorKind::kIo, "set " + what + " to a directory this user can create and write to", what, " ", dir,
                    ": cannot create the directory: ", ec.message());
  }
  SFTGO_CHECK_HINT(fs::is_directory(dir, ec), ErrorKind::kIo, "set " + what + " to a directory", what, " ", dir,
                   ": exists but is not a directory");
  // access(W_OK) is not enough: root passes it on a read-only mount. Create and remove a probe file.
  const std::string probe = (fs::path(dir) / (".sftgo-write-probe-" + std::to_string(::getpid()))).string();
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    SFTGO_FAIL_HINT(ErrorKind::kIo, "set " + what + " to a directory this user can write to", what, " ", dir,
                    ": cannot write there: ", std::strerror(err));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace sftgo
