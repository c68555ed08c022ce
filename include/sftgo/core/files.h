// Checked file output. Every write, fsync and close is checked, so a full disk (ENOSPC), a quota
// (EDQUOT) or a device error (EIO) becomes an sftgo::Error naming the file and what to do, never a
// silently short file or an abort; and what a failed write leaves behind is removed.
#pragma once

#include <cstddef>
#include <memory>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>

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
  // Writes through an existing file that is not a regular file (a device, a FIFO): opened without
  // O_CREAT/O_TRUNC, never removed.
  struct Through {};
  CheckedFile(std::string path, Through);
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
  bool through_ = false;
};

// Every file a command writes at a path the user named (--out, -o, --samples, --convert, --html,
// --jsonl, and write_file_atomic) goes through OutputFile, so one rule holds for all of them:
//  - no file there, or a regular file (links resolved): written to PATH.tmp.PID beside it, fsynced
//    and renamed over it by finish(); on any failure the temporary file is removed and PATH is left
//    as it was;
//  - an existing file that is not a regular file or a directory (/dev/null, /dev/stdout, a FIFO, a
//    terminal): written through, never created, truncated, renamed over or removed; /dev/full fails
//    with ENOSPC like a full disk;
//  - a directory: refused (Error kIo naming the path).
// Errors are sftgo::Error(kIo) naming PATH with the OS reason (strerror) and a hint.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(std::string_view bytes) noexcept { file_->write(bytes.data(), bytes.size()); }
  void finish();
  bool through() const { return through_; }  // written through a non-regular file
  const std::string& path() const { return path_; }

 private:
  std::string path_;    // as the user named it
  std::string target_;  // the regular file replaced (links resolved); "" when written through
  std::unique_ptr<CheckedFile> file_;
  bool through_ = false;
  bool done_ = false;
};

// The whole of `content` to `path` by OutputFile's rule (parent directories are created).
void write_output_file(const std::string& path, std::string_view content);

// A std::ostream over an OutputFile (buffered), for writers that take an ostream. finish() flushes
// and finishes the file; without it the output is discarded (a temporary file removed).
class OutputStream : public std::ostream {
 public:
  explicit OutputStream(const std::string& path);
  ~OutputStream() override;
  void finish();

 private:
  class Buf : public std::streambuf {
   public:
    explicit Buf(OutputFile* f);
    int sync() override;
    int_type overflow(int_type c) override;

   private:
    OutputFile* f_;
    char buf_[1 << 16];
  };
  std::unique_ptr<OutputFile> file_;
  std::unique_ptr<Buf> buf_;
};

// Creates `dir` (and its parents) when missing and checks that a file can be created in it, so an
// unwritable directory is reported once, up front, naming the setting it came from (`what`, e.g.
// "run.output_dir") instead of failing mid-run. Throws Error(kIo) with the OS reason and a hint.
void ensure_writable_directory(const std::string& dir, const std::string& what);

}  // namespace sftgo
