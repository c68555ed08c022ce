// Data parallelism over c10d: launcher detection (mpirun / PMI / torchrun), TCPStore rendezvous,
// Gloo (CPU) or NCCL (GPU) process groups, collectives with timeouts, and a heartbeat watchdog that
// names the rank that died or hung. c10d and gloo types stay inside src/dist: this header only
// speaks at::Tensor, so no other module needs gloo's headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sftgo::dist {

// Where this process sits in the job, read from the launcher's environment.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // rank among this host's ranks: picks the GPU (rank_device_index)
  // Ranks on this host: OMPI_COMM_WORLD_LOCAL_SIZE (mpirun), LOCAL_WORLD_SIZE (torchrun),
  // MPI_LOCALNRANKS (PMI), SLURM_STEP_TASKS_PER_NODE / SLURM_NTASKS_PER_NODE (srun); world_size when
  // the launcher does not say. local_size < world_size means the job spans several hosts.
  int local_size = 1;
  std::string
      master_addr;      // MASTER_ADDR, else (several hosts under srun) the step's first host, else the config default
  int master_port = 0;  // MASTER_PORT, else the config default
  std::string master_addr_source = "config";  // MASTER_ADDR | SLURM_STEP_NODELIST | SLURM_JOB_NODELIST | config
  std::string launcher = "none";              // none | torchrun | mpirun | pmi | slurm
  bool multi_node() const { return local_size < world_size; }
  // torchrun's agent already serves the TCPStore at MASTER_ADDR:MASTER_PORT
  // (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 then connects as a client instead of hosting it.
  bool agent_store = false;
  // mpirun only: seconds between the SIGTERM that a Ctrl-C or SIGTERM to mpirun sends the ranks and
  // the SIGKILL after it (Open MPI's odls_base_sigkill_timeout, seen as OMPI_MCA_odls_base_sigkill_timeout;
  // 1 s when unset). mpirun sends SIGCONT at once, SIGTERM after this many seconds, SIGKILL after as
  // many again: a stop request saves a checkpoint only if the current step and the save fit in it.
  double kill_grace_s = 0;
};

// Reads (in this order) torchrun's RANK/WORLD_SIZE/LOCAL_RANK, Open MPI's OMPI_COMM_WORLD_*,
// then PMI_RANK/PMI_SIZE (MPICH/Hydra, local rank from MPI_LOCALRANKID or PMI_LOCAL_RANK), then
// srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID (only inside a job step, so a process
// started directly in a batch script stays a single process).
// No launcher variables = a single process. `getenv` is injectable for tests. Malformed or
// inconsistent values throw sftgo::Error(kDist) naming the variable.
// Several hosts (local_size < world_size) and no MASTER_ADDR: under srun rank 0's host is the first
// host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST); under mpirun, PMI and torchrun (which always
// sets MASTER_ADDR itself) nothing in the environment names it, so unless the configured default is
// not a loopback address this throws sftgo::Error(kDist) saying what to set, before any connection
// to 127.0.0.1 is tried.
using GetEnv = std::function<const char*(const char*)>;
LaunchEnv detect_launch(const GetEnv& getenv, const std::string& default_addr, int default_port);
LaunchEnv detect_launch(const std::string& default_addr, int default_port);  // the real environment

// The first host name of a Slurm hostlist ("gpu[003-010,12],login1" -> "gpu003"); "" when empty or
// malformed.
std::string first_slurm_host(const std::string& hostlist);

// ---- Rank -> GPU ---------------------------------------------------------------------------------

// The CUDA device index this rank uses, out of `device_count` visible GPUs (pure; tested):
//  - the launcher gave the process one GPU (CUDA_VISIBLE_DEVICES lists a single id, as srun
//    --gpus-per-task=1 or a per-rank wrapper does) or only one is visible: 0;
//  - else the local rank, which must be below device_count.
// `cuda_visible_devices` is the variable's value, or nullptr when unset. Throws sftgo::Error(kDist)
// when a local rank has no GPU of its own or several ranks of this host would share the only one
// (NCCL refuses two ranks on one GPU).
int rank_device_index(const LaunchEnv& env, int device_count, const char* cuda_visible_devices);

// Resolves model.device for this rank ("cpu", "cuda", "cuda:N" or "auto" = cuda when available) and,
// for CUDA, makes the rank's GPU (rank_device_index; "cuda:N" is taken as given) the current device of
// this process, so that every later CUDA call, NCCL communicator, allocator and TorchScript load
// without an index lands on it. Call it right after detect_launch, before any CUDA or NCCL call.
// Throws sftgo::Error(kConfig) for "cuda" on a machine without CUDA.
c10::Device bind_rank_device(const LaunchEnv& env, const std::string& device_name);

// Builds a one-rank NCCL process group on cuda:`device_index` (in-memory store) and runs the
// collectives the trainer uses (all-reduce fp32/bf16/fp64, reduce-scatter, all-gather, barrier),
// checking each result exactly; returns a one-line report. Throws sftgo::Error(kDist) on a mismatch,
// without a GPU, or in a build without NCCL. For the GPU check kit (one GPU cannot host two ranks).
std::string nccl_world1_smoke(int device_index);

// Blocks until the work queued on `device` is done (no-op on the CPU). Unlike torch::cuda::synchronize()
// without an index, which waits for whatever device is current, this waits for the rank's own GPU.
void synchronize_device(c10::Device device);

// Under a launcher (mpirun, torchrun, PMI, srun), makes this process raise SIGTERM once when the launcher
// process that started it dies (prctl PR_SET_PDEATHSIG with a real-time signal, deduplicated), and
// ignores SIGPIPE (the output pipes die with the launcher): a killed mpirun or a second Ctrl-C, after
// which mpirun exits at once, no longer leaves orphans that train on; the trainer's SIGTERM handler
// saves and stops instead. No-op for a single process. Called by Comm::create.
void stop_with_launcher(const LaunchEnv& env);

struct CommOptions {
  std::string backend = "auto";  // auto (NCCL on CUDA devices, Gloo on CPU) | gloo | nccl
  double timeout_s = 600.0;      // collectives, rendezvous and the heartbeat watchdog
};

// An in-flight collective.
class Work {
 public:
  Work() = default;
  void wait();  // throws sftgo::Error(kDist) naming unresponsive ranks, or exits (see Comm)
  bool valid() const { return impl_ != nullptr; }
  struct Impl;
  explicit Work(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<Impl> impl_;
};

// One process group over all ranks. With world_size 1 no store or group is created and every
// collective is the identity, so single-process runs pay nothing.
class Comm {
 public:
  // Collective over all ranks: rank 0 hosts the TCPStore at master_addr:master_port.
  static std::shared_ptr<Comm> create(const LaunchEnv& env, const CommOptions& options, c10::Device device);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  bool distributed() const { return world_ > 1; }
  const std::string& backend() const { return backend_; }
  c10::Device device() const { return device_; }

  // Sum over ranks, in place. The tensor must live on device() (any device for world 1).
  Work all_reduce_async(at::Tensor& t);
  void all_reduce(at::Tensor& t);
  // out [n] = this rank's slice of the sum of every rank's in [world * n].
  void reduce_scatter(at::Tensor& out, const at::Tensor& in);
  // root's t to every rank, in place (t must be contiguous). ZeRO-3 gathers a layer's weights this
  // way, one broadcast per rank owning part of them, as ZeRO-2 reduces a bucket.
  Work broadcast_async(at::Tensor& t, int root);
  // out [world * n] = every rank's in [n], concatenated by rank.
  void all_gather(at::Tensor& out, const at::Tensor& in);
  // Sum over ranks into root's t, in place (other ranks' t is left undefined). ZeRO-2 over NCCL sends
  // each bucket's slice to the rank that owns it this way: buckets do not split evenly across ranks.
  Work reduce_async(at::Tensor& t, int root);
  // out [sum(out_counts)] = the in_counts[rank()] values every rank sends this one, concatenated by
  // sender; in [sum(in_counts)] holds, in rank order, in_counts[r] values for rank r (both contiguous,
  // 1-D, alive until the wait). Over Gloo, ZeRO-2 reduces its buckets this way: each rank sends every
  // other rank the slice it owns and sums what it receives, which moves (world - 1) / world of a bucket
  // per rank where Gloo's reduce (a ring reduce-scatter, then a gather to the root) moves more.
  Work all_to_all_async(at::Tensor& out, at::Tensor& in, std::vector<int64_t> out_counts,
                        std::vector<int64_t> in_counts);
  // Element-wise sum of small host vectors (metrics, statistics): one collective.
  std::vector<double> sum(const std::vector<double>& values);
  void barrier();
  // Starts a thread that publishes this rank's heartbeat in the store every 0.5 s and watches the
  // others'; a rank silent for timeout_s (dead, hung or stopped) makes this process print a message
  // naming it and exit with code 4. Also exits when the store (hosted by rank 0) disappears.
  void start_watchdog();
  // End of the job on every rank: waits for all, stops the watchdog (peers stop watching this rank)
  // and waits again, so rank 0, which hosts the store, can exit without tripping anyone's watchdog.
  void shutdown();

  // Called when a collective failed: waits briefly for heartbeats and names the silent ranks.
  std::string describe_failure(const std::string& what);
  // A second process group over the same ranks (collective: every rank calls it with the same name).
  // Its collectives are ordered among themselves only, so a runtime can issue them from a schedule of
  // its own beside this group's (ZeRO-3's weight gathers beside ZeRO-2's gradient reduces). It shares
  // this group's store and watchdog; world size 1 needs nothing.
  std::shared_ptr<Comm> subgroup(const std::string& name) const;

  struct Impl;

 private:
  Comm() = default;
  int rank_ = 0, world_ = 1;
  std::string backend_ = "none";
  c10::Device device_{c10::kCPU};
  std::unique_ptr<Impl> impl_;
};

// Logs the error and ends the process at once with `code` (no destructors: a process group
// whose peer died can block in its destructor). For fatal distributed failures only.
[[noreturn]] void fatal_exit(const std::string& message, int code = 4);

// ---- Gradient bucketing ---------------------------------------------------------------------

// One bucket: indices into the parameter list, all of one dtype and device.
struct BucketPlan {
  std::vector<size_t> params;
  int64_t numel = 0;
};

// Buckets in reverse parameter order (the order backward produces gradients), a new bucket when
// the dtype/device changes or the next parameter would push the bucket past bucket_bytes (a
// parameter larger than bucket_bytes gets a bucket of its own). keys[i] identifies dtype+device.
std::vector<BucketPlan> plan_buckets(const std::vector<int64_t>& numels, const std::vector<int64_t>& element_sizes,
                                     const std::vector<std::string>& keys, int64_t bucket_bytes);

// Sums gradients across ranks while backward runs, with the gradients living in the all-reduce
// buffers (gradient as bucket view, like PyTorch DDP's gradient_as_bucket_view=True): the parameters
// are grouped into flat buckets (plan_buckets) allocated once, and every parameter's .grad is a view
// of its slice, so backward accumulates straight into the buckets and there is no second copy of the
// gradients. Once arm() was called, a post-accumulate-grad hook marks a parameter's gradient final,
// and a complete bucket starts an async all-reduce in place (in bucket order, so every rank issues
// the same sequence of collectives). finish() launches buckets that never completed (a parameter
// without a gradient contributes its zeros), and waits: the .grad views then hold the sums. Micro-
// steps before the last do not call arm(): gradients just accumulate and no communication happens.
// Between steps call zero_grad() (zeroes the buckets in place), never set .grad to None: a gradient
// that is not a view any more is copied back in (counted in copied_gradients(), warned once).
// With world size 1 the reducer does nothing and allocates nothing.
class GradReducer {
 public:
  // params: the trainable leaves, in model order (buckets fill from the last, as backward runs).
  GradReducer(std::shared_ptr<Comm> comm, std::vector<at::Tensor> params, double bucket_mb);
  ~GradReducer();
  void arm();        // the next backward is the step's last: reduce during it
  void finish();     // after that backward (or after an aborted step, so ranks stay in step)
  void zero_grad();  // zeroes every bucket in place; each .grad stays (or again becomes) its view
  size_t num_buckets() const;
  at::Tensor bucket(size_t b) const;  // [numel of bucket b]: the flat gradient buffer
  int64_t copied_gradients() const;   // gradients found not to be bucket views (0 in a healthy run)
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sftgo::dist
