#include "sftgo/checkpoint/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

// "pid 123 on host h": what the holder wrote into the lock file ("" while it has not yet).
std::string holder_text(int fd) {
  char buf[512] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return "another process";
  const auto parts = split(trim(std::string(buf, static_cast<size_t>(n))), ' ');
  if (parts.size() < 2) return "another process";
  return "pid " + parts[0] + " on host " + parts[1];
}

bool process_gone(long pid) { return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

}  // namespace

RunDirLock::RunDirLock(const std::string& run_dir) : path_((fs::path(run_dir) / ".lock").string()) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, "set run.output_dir to a directory this user can create and write to", run_dir,
                   ": cannot create the run directory: ", ec.message());
  // Never through a link: the lock is truncated and rewritten below, so a .lock that is a symlink (or
  // a hard link, or not a regular file) would have the run overwrite whatever it points at.
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  if (fd_ < 0) {
    const int err = errno;
    SFTGO_CHECK_HINT(err != ELOOP, ErrorKind::kIo, "remove " + path_ + " (sftgo-train creates it as a regular file)",
                     path_, " is a symbolic link: refusing to use it as the run lock (the run would overwrite the "
                     "file it points to)");
    SFTGO_FAIL_HINT(ErrorKind::kIo, "set run.output_dir to a directory this user can write to", path_,
                    ": cannot create the run lock: ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink > 1) {
    const bool regular = S_ISREG(st.st_mode);
    const auto links = static_cast<long>(st.st_nlink);
    ::close(fd_);
    fd_ = -1;
    SFTGO_FAIL_HINT(ErrorKind::kIo, "remove " + path_ + " (sftgo-train creates it as a regular file)", path_,
                    regular ? " has " + std::to_string(links) + " hard links" : std::string(" is not a regular file"),
                    ": refusing to use it as the run lock (the run would overwrite it)");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      const std::string holder = holder_text(fd_);
      ::close(fd_);
      fd_ = -1;
      SFTGO_FAIL_HINT(ErrorKind::kIo,
                      "wait for that run to finish or stop it, or set run.output_dir to another directory",
                      "run.output_dir ", run_dir, " is in use by another sftgo-train run (", holder, " holds ", path_,
                      "): two runs in one directory would overwrite each other's checkpoints and metrics");
    }
    // A filesystem without locks (ENOLCK, EOPNOTSUPP): carry on unguarded rather than refuse to train.
    log_warn("{}: cannot lock the run directory ({}); make sure no other run writes into it", path_,
             std::strerror(err));
    return;
  }
  const std::string me = std::to_string(::getpid()) + " " + host_name() + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    log_warn("{}: cannot record this process in the run lock ({})", path_, std::strerror(errno));
}

RunDirLock::~RunDirLock() {
  // The file stays: removing it would let a third process lock a fresh inode while a second one still
  // holds the old. Closing drops the lock (so does the kernel when the process dies).
  if (fd_ >= 0) ::close(fd_);
}

std::string describe_existing_run(const std::string& run_dir) {
  std::string out;
  const auto ckpts = list_checkpoints(run_dir);
  if (!ckpts.empty()) {
    out = "checkpoints " + fs::path(ckpts.front()).filename().string();
    if (ckpts.size() > 1) out += ".." + fs::path(ckpts.back()).filename().string();
    out += " (" + std::to_string(ckpts.size()) + ")";
  }
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  std::error_code ec;
  if (fs::is_regular_file(metrics, ec) && fs::file_size(metrics, ec) > 0) {
    size_t lines = 0;
    try {
      for (char c : read_file(metrics.string())) lines += c == '\n';
    } catch (const Error&) {
    }
    if (!out.empty()) out += " and ";
    out += "metrics.jsonl (" + std::to_string(lines) + " lines)";
  }
  return out;
}

void prepare_fresh_run(const std::string& run_dir, bool overwrite) {
  std::error_code ec;
  // .overwritten-PID left by a process killed while deleting: finish the job.
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!starts_with(name, ".overwritten-") || !process_gone(std::strtol(name.c_str() + 13, nullptr, 10))) continue;
    std::error_code rm_ec;
    fs::remove_all(e.path(), rm_ec);
  }
  const std::string existing = describe_existing_run(run_dir);
  if (existing.empty()) return;
  SFTGO_CHECK_HINT(overwrite, ErrorKind::kConfig,
                   "continue that run with --resume auto, replace it with --overwrite (deletes its checkpoints and "
                   "metrics), or set run.output_dir to a new directory",
                   "run.output_dir ", run_dir, " already holds a run (", existing,
                   "): a new run there would mix its checkpoints and metrics with that one's");
  // Move, then delete: each rename is atomic, so checkpoints/ is either the old run's, whole, or gone;
  // a crash while deleting leaves only .overwritten-PID, removed by the next run.
  const fs::path trash = fs::path(run_dir) / (".overwritten-" + std::to_string(::getpid()));
  fs::create_directories(trash, ec);
  SFTGO_CHECK(!ec, ErrorKind::kIo, trash.string(), ": cannot create: ", ec.message());
  for (const char* name : {"checkpoints", "metrics.jsonl", "group_losses.svg"}) {
    const fs::path from = fs::path(run_dir) / name;
    if (!fs::exists(fs::symlink_status(from, ec))) continue;
    fs::rename(from, trash / name, ec);
    SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, "remove it by hand or set run.output_dir to a new directory",
                     "--overwrite: cannot move ", from.string(), " aside: ", ec.message());
  }
  fs::remove_all(trash, ec);
  if (ec)
    log_warn("--overwrite: could not delete {} ({}); it is removed by the next run", trash.string(), ec.message());
  log_info("--overwrite: deleted the previous run in {} ({})", run_dir, existing);
}

}  // namespace sftgo::checkpoint
