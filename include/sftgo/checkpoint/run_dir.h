// The run directory (run.output_dir) belongs to one run at a time. Two guards, both taken by the
// process that writes the run files (rank 0) before it writes anything:
//   - an exclusive lock on RUN_DIR/.lock, so a second process training into the same directory
//     fails at once naming the holder instead of mixing checkpoints and metrics with it;
//   - the fresh-run guard: a new run (no --resume) refuses a directory that already holds another
//     run's checkpoints or metrics unless told to overwrite them.
#pragma once

#include <string>

namespace sftgo::checkpoint {

// An exclusive flock(2) on RUN_DIR/.lock, held for the object's lifetime. The kernel drops it when
// the process ends in any way (kill -9 included), so a crashed holder never blocks a later run; the
// file only records the last holder ("pid host") for the message. Also works across hosts on NFS
// (Linux maps flock to a POSIX lock there).
class RunDirLock {
 public:
  // Creates RUN_DIR when missing. Throws Error(kIo) naming the holder's pid and host when another
  // process holds the lock, or the directory and the OS reason when it cannot be created.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Whether RUN_DIR holds a run: "" when not, else a description of what is there ("checkpoints
// step_00000005..step_00000012 (3) and metrics.jsonl (12 lines)").
std::string describe_existing_run(const std::string& run_dir);

// The fresh-run guard, for a run started without --resume. When RUN_DIR holds another run:
// overwrite = false throws Error(kConfig) naming the directory and what is there, with the choices
// (--resume auto, --overwrite, another run.output_dir); overwrite = true moves its checkpoints/,
// metrics.jsonl and group_losses.svg into RUN_DIR/.overwritten-PID (renames: all-or-nothing per
// entry) and deletes that, so no half-deleted checkpoint is ever visible under checkpoints/.
// Also removes .overwritten-PID directories left by a process killed while deleting.
void prepare_fresh_run(const std::string& run_dir, bool overwrite);

}  // namespace sftgo::checkpoint
