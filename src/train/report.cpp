#include "sftgo/train/report.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

extern char** environ;

namespace sftgo::train {
namespace fs = std::filesystem;

namespace {

// The follower's exit status when it has already reported each failure in its own warning line.
constexpr int kFollowerWarned = 3;

bool is_executable(const fs::path& p) { return ::access(p.c_str(), X_OK) == 0 && fs::is_regular_file(p); }

// posix_spawnp of `argv` with `stdin_fd` as its standard input (-1: inherited). A trainer's follower
// runs in a process group of its own (`own_group`), so a Ctrl-C meant for the trainer does not cut it
// off before it has sent the lines the trainer wrote while stopping. Returns the pid, or -1 with the
// error number in `err`.
pid_t spawn_follower(const std::vector<std::string>& argv, int stdin_fd, bool own_group, int& err) {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  if (stdin_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | (own_group ? POSIX_SPAWN_SETPGROUP : 0));
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  err = ::posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  return err == 0 ? pid : -1;
}

std::vector<std::string> follower_argv(const FollowerCommand& cmd, const std::string& run_dir,
                                       const std::string& targets) {
  std::vector<std::string> argv = {cmd.python, cmd.script, run_dir, "--to", targets};
  if (!cmd.sftgo.empty()) {
    argv.push_back("--sftgo");
    argv.push_back(cmd.sftgo);
  }
  return argv;
}

// "exited with status 2" / "was killed by signal 9"; "" for the statuses that need no warning.
std::string follower_failure(int status) {
  if (WIFEXITED(status)) {
    const int code = WEXITSTATUS(status);
    if (code == 0 || code == kFollowerWarned) return "";
    return "exited with status " + std::to_string(code);
  }
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

std::vector<std::string> report_targets(const std::string& report_to) {
  std::vector<std::string> out;
  for (const auto& part : split(report_to, ',')) {
    const std::string name = trim(part);
    if (!name.empty()) out.push_back(name);
  }
  return out;
}

FollowerCommand follower_command(const std::string& python_setting) {
  FollowerCommand cmd;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  // A checkout's binary lives in ROOT/<build dir>/bin; the script and the venv are in ROOT.
  const fs::path root = ec ? fs::path() : exe.parent_path().parent_path().parent_path();
  if (!ec && exe.filename() == "sftgo-train") cmd.sftgo = exe.string();
  if (!root.empty() && fs::is_regular_file(root / "scripts" / "sftgo_track.py"))
    cmd.script = (root / "scripts" / "sftgo_track.py").string();
  if (!python_setting.empty())
    cmd.python = python_setting;
  else if (!root.empty() && is_executable(root / ".venv" / "bin" / "python"))
    cmd.python = (root / ".venv" / "bin" / "python").string();
  else
    cmd.python = "python3";
  return cmd;
}

std::unique_ptr<TrackerFollower> TrackerFollower::start(const Config& cfg, bool fresh) {
  const std::string targets = join(report_targets(cfg.logging.report_to), ",");
  if (targets.empty()) return nullptr;
  const FollowerCommand cmd = follower_command(cfg.logging.python);
  if (cmd.script.empty()) {
    log_warn("logging.report_to: scripts/sftgo_track.py is not next to this binary (a checkout's build/bin), so "
             "nothing is sent to {}; metrics.jsonl holds every step", targets);
    return nullptr;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    log_warn("logging.report_to: cannot create a pipe for the tracker follower ({}); metrics.jsonl holds every step",
             std::strerror(errno));
    return nullptr;
  }
  auto argv = follower_argv(cmd, cfg.run.output_dir, targets);
  argv.push_back("--follow");
  if (fresh) argv.push_back("--fresh");
  int err = 0;
  const pid_t pid = spawn_follower(argv, fds[0], /*own_group=*/true, err);
  ::close(fds[0]);
  if (pid < 0) {
    ::close(fds[1]);
    log_warn("logging.report_to: cannot start the tracker follower '{} {}' ({}; set logging.python); metrics.jsonl "
             "holds every step",
             cmd.python, cmd.script, std::strerror(err));
    return nullptr;
  }
  log_info("reporting to {} through the follower process {} ({})", targets, pid, cmd.python);
  return std::unique_ptr<TrackerFollower>(new TrackerFollower(pid, fds[1], cfg.run.output_dir, targets));
}

TrackerFollower::~TrackerFollower() {
  ::close(pipe_fd_);  // end of input: the follower sends the rest and closes its tracker runs
  using Clock = std::chrono::steady_clock;
  const auto begin = Clock::now();
  const auto deadline = begin + std::chrono::duration<double>(kFinishWaitS);
  bool announced = false;
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid_, &status, WNOHANG)) == 0 && Clock::now() < deadline) {
    if (!announced && Clock::now() > begin + std::chrono::seconds(2)) {
      log_info("waiting for the tracker follower to finish sending to {} (at most {:.0f} s)", targets_, kFinishWaitS);
      announced = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string again = "sftgo-train track " + run_dir_ + " --to " + targets_;
  if (done == 0) {
    log_warn("the tracker follower (pid {}) is still sending after {:.0f} s; it goes on alone (or run `{}` later)",
             pid_, kFinishWaitS, again);
    return;
  }
  const std::string failure = done < 0 ? std::string("could not be waited for: ") + std::strerror(errno)
                                       : follower_failure(status);
  if (!failure.empty())
    log_warn("the tracker follower (pid {}) {}; metrics.jsonl holds every step: send them with `{}`", pid_, failure,
             again);
}

int track_run_dir(const std::string& run_dir, const std::vector<std::string>& targets, const std::string& python) {
  const FollowerCommand cmd = follower_command(python);
  if (cmd.script.empty()) {
    log_error("scripts/sftgo_track.py is not next to this binary (a checkout's build/bin)");
    return 1;
  }
  int err = 0;
  const pid_t pid = spawn_follower(follower_argv(cmd, run_dir, join(targets, ",")), -1, /*own_group=*/false, err);
  if (pid < 0) {
    log_error("cannot start '{} {}': {} (set --python)", cmd.python, cmd.script, std::strerror(err));
    return 1;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace sftgo::train
