#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
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

bool is_loopback(const std::string& addr) {
  return addr.empty() || addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

// Slurm's per-node task counts ("2(x3),1" = 2, 2, 2, 1), entry `node`; 0 when absent or malformed.
int slurm_tasks_on_node(const std::string& spec, int node) {
  int seen = 0;
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(pos, end - pos);
    pos = end + 1;
    char* rest = nullptr;
    const long count = std::strtol(item.c_str(), &rest, 10);
    if (rest == item.c_str() || count <= 0) return 0;
    long repeat = 1;
    if (*rest == '(') {
      if (rest[1] != 'x') return 0;
      char* close = nullptr;
      repeat = std::strtol(rest + 2, &close, 10);
      if (close == rest + 2 || *close != ')' || close[1] != '\0' || repeat <= 0) return 0;
    } else if (*rest != '\0') {
      return 0;
    }
    if (node < seen + repeat) return static_cast<int>(count);
    seen += static_cast<int>(repeat);
  }
  return 0;
}

}  // namespace

std::string first_slurm_host(const std::string& hostlist) {
  // Host names and bracketed ranges, comma-separated at bracket depth 0: "pre[01-04,7]post,other".
  size_t end = 0;
  int depth = 0;
  for (; end < hostlist.size(); ++end) {
    if (hostlist[end] == '[') ++depth;
    if (hostlist[end] == ']') --depth;
    if (depth < 0) return "";
    if (hostlist[end] == ',' && depth == 0) break;
  }
  if (depth != 0) return "";
  const std::string first = hostlist.substr(0, end);
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  const size_t close = first.find(']', open);
  if (close == std::string::npos || first.find('[', close) != std::string::npos) return "";  // one range only
  const std::string range = first.substr(open + 1, close - open - 1);
  // The first number of the range, its zero padding kept ("003-010" -> "003").
  size_t n = 0;
  while (n < range.size() && std::isdigit(static_cast<unsigned char>(range[n]))) ++n;
  if (n == 0) return "";
  return first.substr(0, open) + range.substr(0, n) + first.substr(close + 1);
}

namespace {

// Rank, world size and ranks on this host from the first launcher whose variables are set.
void read_launcher_ranks(const GetEnv& getenv, LaunchEnv& e) {
  if (has(getenv, "RANK") || has(getenv, "WORLD_SIZE")) {
    SFTGO_CHECK(has(getenv, "RANK") && has(getenv, "WORLD_SIZE"), ErrorKind::kDist,
                "torchrun-style launch needs both RANK and WORLD_SIZE in the environment");
    e.launcher = "torchrun";
    e.rank = env_int(getenv, "RANK", 0, 0);
    e.world_size = env_int(getenv, "WORLD_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "LOCAL_RANK", e.rank, 0);
    e.local_size = env_int(getenv, "LOCAL_WORLD_SIZE", e.world_size, 1);
    const char* agent = getenv("TORCHELASTIC_USE_AGENT_STORE");
    e.agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "1");
  } else if (has(getenv, "OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "mpirun";
    e.rank = env_int(getenv, "OMPI_COMM_WORLD_RANK", 0, 0);
    e.world_size = env_int(getenv, "OMPI_COMM_WORLD_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", e.rank, 0);
    e.local_size = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", e.world_size, 1);
    e.kill_grace_s = env_int(getenv, "OMPI_MCA_odls_base_sigkill_timeout", 1, 0);
  } else if (has(getenv, "PMI_SIZE")) {
    e.launcher = "pmi";
    e.rank = env_int(getenv, "PMI_RANK", 0, 0);
    e.world_size = env_int(getenv, "PMI_SIZE", 1, 1);
    e.local_rank = env_int(getenv, "MPI_LOCALRANKID", env_int(getenv, "PMI_LOCAL_RANK", e.rank, 0), 0);
    e.local_size = env_int(getenv, "MPI_LOCALNRANKS", env_int(getenv, "PMI_LOCAL_SIZE", e.world_size, 1), 1);
  } else if (has(getenv, "SLURM_STEP_NUM_TASKS") && has(getenv, "SLURM_PROCID")) {
    // srun: a job step (a batch script's own process has no SLURM_STEP_NUM_TASKS).
    e.launcher = "slurm";
    e.rank = env_int(getenv, "SLURM_PROCID", 0, 0);
    e.world_size = env_int(getenv, "SLURM_STEP_NUM_TASKS", 1, 1);
    e.local_rank = env_int(getenv, "SLURM_LOCALID", 0, 0);
    const int nodes = env_int(getenv, "SLURM_STEP_NUM_NODES", env_int(getenv, "SLURM_JOB_NUM_NODES", 1, 1), 1);
    const char* per_node = getenv("SLURM_STEP_TASKS_PER_NODE");
    int local = per_node != nullptr ? slurm_tasks_on_node(per_node, env_int(getenv, "SLURM_NODEID", 0, 0)) : 0;
    if (local == 0) local = env_int(getenv, "SLURM_NTASKS_PER_NODE", 0, 0);
    if (local == 0) local = nodes == 1 ? e.world_size : (e.world_size + nodes - 1) / nodes;
    e.local_size = local;
  }
}

// MASTER_ADDR/MASTER_PORT, else (srun over several hosts) the step's first host, else the config's;
// a multi-host job left with a loopback address is refused (each host would wait on itself).
void resolve_master(const GetEnv& getenv, const std::string& default_addr, int default_port, LaunchEnv& e) {
  const char* addr = getenv("MASTER_ADDR");
  e.master_addr = addr != nullptr && *addr != '\0' ? std::string(addr) : default_addr;
  e.master_addr_source = addr != nullptr && *addr != '\0' ? "MASTER_ADDR" : "config";
  e.master_port = env_int(getenv, "MASTER_PORT", default_port, 1);
  if (e.multi_node() && e.master_addr_source == "config" && is_loopback(e.master_addr)) {
    // Every host would rendezvous at its own loopback address and wait there until the timeout.
    if (e.launcher == "slurm") {
      for (const char* var : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"}) {
        const char* list = getenv(var);
        const std::string host = list != nullptr ? first_slurm_host(list) : std::string();
        if (!host.empty()) {
          e.master_addr = host;
          e.master_addr_source = var;
          break;
        }
      }
    }
    if (e.master_addr_source == "config") {
      const char* size_var = e.launcher == "mpirun"     ? "OMPI_COMM_WORLD_LOCAL_SIZE"
                             : e.launcher == "torchrun" ? "LOCAL_WORLD_SIZE"
                             : e.launcher == "pmi"      ? "MPI_LOCALNRANKS"
                                                        : "SLURM_STEP_TASKS_PER_NODE";
      const char* example =
          e.launcher == "mpirun"
              ? "mpirun -x MASTER_ADDR=<rank 0's host> -x MASTER_PORT=29500 --hostfile HOSTS -np N ..."
          : e.launcher == "torchrun"
              ? "torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint <rank 0's host>:29500 ..."
              : "export MASTER_ADDR=<rank 0's host> MASTER_PORT=29500 before launching";
      SFTGO_FAIL_HINT(ErrorKind::kDist,
                      sftgo::format("set MASTER_ADDR (and MASTER_PORT) to rank 0's host for every rank, e.g. {}; or "
                                    "set dist.master_addr in the config (docs/gpu.md, several nodes)",
                                    example),
                      "this ", e.launcher, " job spans several hosts (", e.local_size, " of its ", e.world_size,
                      " ranks on this host, ", size_var,
                      ") but MASTER_ADDR is not set, so every host would "
                      "rendezvous at its own ",
                      e.master_addr.empty() ? std::string("127.0.0.1") : e.master_addr,
                      " (dist.master_addr) and wait there until dist.timeout_s");
    }
  }
}

}  // namespace

LaunchEnv detect_launch(const GetEnv& getenv, const std::string& default_addr, int default_port) {
  LaunchEnv e;
  read_launcher_ranks(getenv, e);
  SFTGO_CHECK(e.rank < e.world_size, ErrorKind::kDist, "rank ", e.rank, " from the ", e.launcher,
              " environment is not below the world size ", e.world_size);
  SFTGO_CHECK(e.local_size <= e.world_size && e.local_rank < e.local_size, ErrorKind::kDist, "the ", e.launcher,
              " environment puts local rank ", e.local_rank, " among ", e.local_size,
              " ranks on this host of a world of ", e.world_size,
              ": expected local rank < ranks on this host <= world size");
  resolve_master(getenv, default_addr, default_port, e);
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
