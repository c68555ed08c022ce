// Checked file output. Every write, fsync and close is checked, so a full disk (ENOSPC), a quota
// (EDQUOT) or a device error (EIO) becomes an sftgo::Error naming the file and what to do, never a
// silently short file or an abort; and what a failed write leaves behind is removed.
#pragma once

#include <cstddef>
#include <string>

namespace sftgo {

// What to do about errno `err` from writing under `path`: for ENOSPC/EDQUOT the free space left on
// that filesystem, for EROFS/EACCES/EPERM "choose a writable directory"; "" when there is nothing to add.
std::string write_error_hint(int err, const std::string& path);

// A new file at `path`, written in pieces. write() never throws: it remembers the first error and
// drops the rest, because it may sit behind a writer that must not throw mid-stream (LibTorch's
// zip writer calls std::terminate when its sink fails while it unwinds). finish() fsyncs, closes
// and throws the first error as sftgo::Error(kIo) naming the file. A file that was not finished
// successfully is removed by the destructor, so a failed write leaves nothing behind.
class CheckedFile {
 public:
  explicit CheckedFile(std::string path);  // throws Error(kIo) naming the path when it cannot be created
  ~CheckedFile();
  CheckedFile(const CheckedFile&) = delete;
  CheckedFile& operator=(const CheckedFile&) = delete;

  // Returns n even after a failure (see above); failed() tells.
  size_t write(const void* data, size_t n) noexcept;
  void finish();
  bool failed() const { return err_ != 0; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  int err_ = 0;
  bool done_ = false;
};

// Creates `dir` (and its parents) when missing and checks that a file can be created in it, so an
// unwritable directory is reported once, up front, naming the setting it came from (`what`, e.g.
// "run.output_dir") instead of failing mid-run. Throws Error(kIo) with the OS reason and a hint.
void ensure_writable_directory(const std::string& dir, const std::string& what);

}  // namespace sftgo
