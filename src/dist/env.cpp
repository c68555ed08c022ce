#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>

#include "sftgo/core/error.h"
#include "sftgo/dist/dist.h"

namespace sftgo::dist {
namespace {

// Parses an environment integer; names the variable on failure.
int env_int(const GetEnv& getenv, const char* name, int fallback, int min_value) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  SFTGO_CHECK(errno == 0 && end != v && *end == '\0' && x >= min_value && x <= 1 << 20, ErrorKind::kDist,
              "environment variable ", name, "='", v, "' is not an integer in [", min_value, ", 1048576]");
  return static_cast<int>(x);
}

bool has(const GetEnv& getenv, const char* name) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0';
}

}  // namespace

LaunchEnv detect_launch(const GetEnv& getenv, const std::string& default_addr, int default_port) {
  LaunchEnv e;
  if (has(getenv, "RANK") || has(getenv, "WORLD_SIZE")) {
    SFTGO_CHECK(has(getenv, "RANK") && has(getenv, "WORLD_SIZE"), ErrorKind::kDist,
                "torchrun-style launch needs both RANK and WORLD_SIZE in the environment");
    e.launcher = "torchrun";
    e.rank = env_int(getenv, "RANK", 0, 0);
    e.world_size = env_int(getenv, "WORLD_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "LOCAL_RANK", e.rank, 0);
    const char* agent = getenv("TORCHELASTIC_USE_AGENT_STORE");
    e.agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "1");
  } else if (has(getenv, "OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "mpirun";
    e.rank = env_int(getenv, "OMPI_COMM_WORLD_RANK", 0, 0);
    e.world_size = env_int(getenv, "OMPI_COMM_WORLD_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", e.rank, 0);
    e.kill_grace_s = env_int(getenv, "OMPI_MCA_odls_base_sigkill_timeout", 1, 0);
  } else if (has(getenv, "PMI_SIZE")) {
    e.launcher = "pmi";
    e.rank = env_int(getenv, "PMI_RANK", 0, 0);
    e.world_size = env_int(getenv, "PMI_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "MPI_LOCALRANKID", env_int(getenv, "PMI_LOCAL_RANK", e.rank, 0), 0);
  }
  SFTGO_CHECK(e.rank < e.world_size, ErrorKind::kDist, "rank ", e.rank, " from the ", e.launcher,
              " environment is not below the world size ", e.world_size);
  const char* addr = getenv("MASTER_ADDR");
  e.master_addr = addr != nullptr && *addr != '\0' ? std::string(addr) : default_addr;
  e.master_port = env_int(getenv, "MASTER_PORT", default_port, 1);
  SFTGO_CHECK(e.master_port <= 65535, ErrorKind::kDist, "MASTER_PORT ", e.master_port, " is not a TCP port");
  return e;
}

namespace {
std::atomic<bool> g_launcher_gone{false};

// The kernel sends the parent-death signal each time a thread of the dying launcher that is our
// parent exits (the child is re-parented to the next live thread first), so a multi-threaded mpirun
// killed outright delivers it several times. Only the first becomes the trainer's SIGTERM: one stop
// request, which saves; a second SIGTERM would mean "exit now without saving".
void on_launcher_gone(int) {
  if (!g_launcher_gone.exchange(true)) ::kill(::getpid(), SIGTERM);
}
}  // namespace

void stop_with_launcher(const LaunchEnv& env) {
  if (env.launcher == "none") return;
  // Output goes through the launcher (mpirun's pipes): once it is gone a write must fail with EPIPE
  // rather than kill the rank with SIGPIPE before it has saved.
  std::signal(SIGPIPE, SIG_IGN);
  const int sig = SIGRTMIN + 3;  // a real-time signal nothing else here uses (glibc keeps the first two)
  struct sigaction sa {};
  sa.sa_handler = on_launcher_gone;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (::sigaction(sig, &sa, nullptr) != 0) return;
  // A launcher already gone before this call left us to init (pid 1).
  if (::prctl(PR_SET_PDEATHSIG, sig) == 0 && ::getppid() == 1) on_launcher_gone(sig);
}

LaunchEnv detect_launch(const std::string& default_addr, int default_port) {
  return detect_launch([](const char* n) { return std::getenv(n); }, default_addr, default_port);
}

}  // namespace sftgo::dist
