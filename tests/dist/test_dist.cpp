// dist: launcher parsing, bucket planning, and (in forked 2-process Gloo groups) the collectives,
// the bucketed gradient reducer and ZeRO-1 against plain LibTorch references.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "sftgo/core/error.h"
#include "sftgo/dist/buffer_pool.h"
#include "sftgo/dist/dist.h"
#include "sftgo/dist/gpu.h"
#include "sftgo/dist/zero.h"
#include "sftgo/optim/optim.h"

namespace fs = std::filesystem;
using namespace sftgo;
using namespace sftgo::dist;

namespace {

GetEnv env_of(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs body(rank) in `world` forked processes joined into one Gloo group; every child must return
// true. Children exit with _exit so gtest state in them never runs twice.
void run_ranks(int world, const std::function<bool(std::shared_ptr<Comm>)>& body) {
  const int port = free_port();
  std::vector<pid_t> kids;
  for (int r = 0; r < world; ++r) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int code = 1;
      try {
        torch::set_num_threads(1);
        LaunchEnv e;
        e.rank = r;
        e.world_size = world;
        e.master_addr = "127.0.0.1";
        e.master_port = port;
        CommOptions o;
        o.backend = "gloo";
        o.timeout_s = 60;
        auto comm = Comm::create(e, o, c10::kCPU);
        code = body(comm) ? 0 : 1;
        comm->shutdown();
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "rank %d: %s\n", r, ex.what());
      }
      std::fflush(stderr);
      ::_exit(code);
    }
    kids.push_back(pid);
  }
  for (size_t r = 0; r < kids.size(); ++r) {
    int status = 0;
    ::waitpid(kids[r], &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank " << r << " failed (status " << status << ")";
  }
}

bool close(const at::Tensor& a, const at::Tensor& b, double rtol, double atol, const char* what) {
  if (at::allclose(a, b, rtol, atol)) return true;
  std::fprintf(stderr, "%s: max abs diff %g\n", what, (a - b).abs().max().item<double>());
  return false;
}

}  // namespace

TEST(DetectLaunch, NoLauncherIsOneProcess) {
  auto e = detect_launch(env_of({}), "10.0.0.1", 29500);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.launcher, "none");
  EXPECT_EQ(e.master_addr, "10.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(DetectLaunch, Torchrun) {
  auto e = detect_launch(
      env_of(
          {{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "1234"}}),
      "127.0.0.1", 29500);
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_FALSE(e.agent_store);
  e = detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}}), "h", 1);
  EXPECT_TRUE(e.agent_store);
}

TEST(DetectLaunch, OpenMpiAndPmi) {
  auto e = detect_launch(
      env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}),
      "127.0.0.1", 29500);
  EXPECT_EQ(e.launcher, "mpirun");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 2);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.kill_grace_s, 1.0);  // Open MPI's default odls_base_sigkill_timeout
  e = detect_launch(
      env_of(
          {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_MCA_odls_base_sigkill_timeout", "60"}}),
      "127.0.0.1", 29500);
  EXPECT_EQ(e.kill_grace_s, 60.0);
  e = detect_launch(env_of({{"PMI_RANK", "2"}, {"PMI_SIZE", "4"}, {"MPI_LOCALRANKID", "0"}}), "h", 7);
  EXPECT_EQ(e.launcher, "pmi");
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 0);
  // torchrun variables win over mpirun's (torchrun under an MPI allocation).
  e = detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}), "h", 7);
  EXPECT_EQ(e.launcher, "torchrun");
}

TEST(DetectLaunch, BadValuesNameTheVariable) {
  auto expect_error = [](std::map<std::string, std::string> vars, const std::string& needle) {
    try {
      detect_launch(env_of(std::move(vars)), "h", 1);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kDist);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"RANK", "0"}}, "WORLD_SIZE");
  expect_error({{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK='x'");
  expect_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "not below the world size 2");
  expect_error({{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "-1"}}, "OMPI_COMM_WORLD_RANK");
  expect_error({{"MASTER_PORT", "99999"}}, "MASTER_PORT");
  expect_error({{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_MCA_odls_base_sigkill_timeout", "soon"}},
               "OMPI_MCA_odls_base_sigkill_timeout='soon'");
}

// ---- several hosts, Slurm, rank -> GPU (issue 15, items 5 and 9) ----------------------------------

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return std::string(e.what()) + " | hint: " + e.hint() + " | kind " + std::to_string(static_cast<int>(e.kind()));
  }
  return "";
}
}  // namespace

TEST(DetectLaunch, LocalSizeFromEachLauncher) {
  auto e = detect_launch(env_of({{"RANK", "5"},
                                 {"WORLD_SIZE", "16"},
                                 {"LOCAL_RANK", "5"},
                                 {"LOCAL_WORLD_SIZE", "8"},
                                 {"MASTER_ADDR", "node0"}}),
                         "127.0.0.1", 29500);
  EXPECT_EQ(e.local_size, 8);
  EXPECT_TRUE(e.multi_node());
  e = detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "1"},
                            {"OMPI_COMM_WORLD_SIZE", "2"},
                            {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                            {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
                    "127.0.0.1", 1);
  EXPECT_EQ(e.local_size, 2);
  EXPECT_FALSE(e.multi_node());
  EXPECT_EQ(e.master_addr, "127.0.0.1");  // one host: loopback is right
  // Not given: every rank is taken to be on this host (the old behaviour).
  e = detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"}}), "127.0.0.1", 1);
  EXPECT_EQ(e.local_size, 4);
  e = detect_launch(env_of({{"PMI_RANK", "2"},
                            {"PMI_SIZE", "4"},
                            {"MPI_LOCALRANKID", "0"},
                            {"MPI_LOCALNRANKS", "2"},
                            {"MASTER_ADDR", "h0"}}),
                    "127.0.0.1", 7);
  EXPECT_EQ(e.local_size, 2);
  EXPECT_TRUE(e.multi_node());
  EXPECT_NE(error_of([] {
              detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "0"},
                                    {"OMPI_COMM_WORLD_SIZE", "4"},
                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                                    {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
                            "h", 1);
            }).find("local rank 2 among 2 ranks"),
            std::string::npos);
}

TEST(DetectLaunch, SeveralHostsWithoutMasterAddrStopAtOnceSayingWhatToSet) {
  // mpirun over two hosts: Open MPI names no rank-0 address, so the default 127.0.0.1 would send every
  // host to its own loopback.
  const auto mpi = env_of({{"OMPI_COMM_WORLD_RANK", "3"},
                           {"OMPI_COMM_WORLD_SIZE", "16"},
                           {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                           {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"}});
  std::string msg = error_of([&] { detect_launch(mpi, "127.0.0.1", 29500); });
  EXPECT_NE(msg.find("spans several hosts (8 of its 16 ranks on this host, OMPI_COMM_WORLD_LOCAL_SIZE)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("MASTER_ADDR is not set"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mpirun -x MASTER_ADDR="), std::string::npos) << msg;
  EXPECT_NE(msg.find("kind " + std::to_string(static_cast<int>(ErrorKind::kDist))), std::string::npos) << msg;
  // "localhost" is loopback too; a real configured address or MASTER_ADDR is taken as given.
  EXPECT_NE(error_of([&] { detect_launch(mpi, "localhost", 29500); }), "");
  EXPECT_EQ(detect_launch(mpi, "10.1.2.3", 29500).master_addr, "10.1.2.3");
  const auto mpi_addr = env_of({{"OMPI_COMM_WORLD_RANK", "3"},
                                {"OMPI_COMM_WORLD_SIZE", "16"},
                                {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                                {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"},
                                {"MASTER_ADDR", "node07"}});
  auto e = detect_launch(mpi_addr, "127.0.0.1", 29500);
  EXPECT_EQ(e.master_addr, "node07");
  EXPECT_EQ(e.master_addr_source, "MASTER_ADDR");
  // torchrun-style variables set by hand without MASTER_ADDR, and PMI.
  msg = error_of([] {
    detect_launch(env_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "1"}}),
                  "127.0.0.1", 29500);
  });
  EXPECT_NE(msg.find("LOCAL_WORLD_SIZE"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--rdzv-endpoint"), std::string::npos) << msg;
  msg = error_of([] {
    detect_launch(env_of({{"PMI_RANK", "0"}, {"PMI_SIZE", "4"}, {"MPI_LOCALNRANKS", "2"}}), "127.0.0.1", 29500);
  });
  EXPECT_NE(msg.find("MPI_LOCALNRANKS"), std::string::npos) << msg;
}

TEST(DetectLaunch, SlurmStepFindsRankZerosHost) {
  // srun -N 2 --ntasks-per-node 4: rank 6 is local rank 2 on the second node.
  auto e = detect_launch(env_of({{"SLURM_PROCID", "6"},
                                 {"SLURM_STEP_NUM_TASKS", "8"},
                                 {"SLURM_LOCALID", "2"},
                                 {"SLURM_NODEID", "1"},
                                 {"SLURM_STEP_NUM_NODES", "2"},
                                 {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"},
                                 {"SLURM_STEP_NODELIST", "gpu[007-008]"},
                                 {"SLURM_JOB_NODELIST", "gpu[001-008]"}}),
                         "127.0.0.1", 29500);
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_size, 4);
  EXPECT_TRUE(e.multi_node());
  EXPECT_EQ(e.master_addr, "gpu007");
  EXPECT_EQ(e.master_addr_source, "SLURM_STEP_NODELIST");
  // Uneven counts: the node's own entry.
  e = detect_launch(env_of({{"SLURM_PROCID", "4"},
                            {"SLURM_STEP_NUM_TASKS", "5"},
                            {"SLURM_LOCALID", "0"},
                            {"SLURM_NODEID", "2"},
                            {"SLURM_STEP_NUM_NODES", "3"},
                            {"SLURM_STEP_TASKS_PER_NODE", "2(x2),1"},
                            {"SLURM_JOB_NODELIST", "a1,b2,c3"}}),
                    "127.0.0.1", 29500);
  EXPECT_EQ(e.local_size, 1);
  EXPECT_EQ(e.master_addr, "a1");
  EXPECT_EQ(e.master_addr_source, "SLURM_JOB_NODELIST");
  // One node: loopback is right.
  e = detect_launch(env_of({{"SLURM_PROCID", "1"},
                            {"SLURM_STEP_NUM_TASKS", "2"},
                            {"SLURM_LOCALID", "1"},
                            {"SLURM_STEP_NUM_NODES", "1"},
                            {"SLURM_STEP_NODELIST", "n1"}}),
                    "127.0.0.1", 29500);
  EXPECT_FALSE(e.multi_node());
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  // A batch script's own process (no job step) is a single process, whatever SLURM_NTASKS says.
  e = detect_launch(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "16"}, {"SLURM_JOB_NODELIST", "n[1-2]"}}),
                    "127.0.0.1", 29500);
  EXPECT_EQ(e.launcher, "none");
  EXPECT_EQ(e.world_size, 1);
  // Several nodes and an unreadable node list: the same clear error as mpirun's.
  const std::string msg = error_of([] {
    detect_launch(env_of({{"SLURM_PROCID", "0"},
                          {"SLURM_STEP_NUM_TASKS", "2"},
                          {"SLURM_LOCALID", "0"},
                          {"SLURM_STEP_NUM_NODES", "2"},
                          {"SLURM_STEP_NODELIST", "n[1-"}}),
                  "127.0.0.1", 29500);
  });
  EXPECT_NE(msg.find("MASTER_ADDR is not set"), std::string::npos) << msg;
}

TEST(DetectLaunch, FirstSlurmHost) {
  EXPECT_EQ(first_slurm_host("gpu[003-010,12],login1"), "gpu003");
  EXPECT_EQ(first_slurm_host("node5"), "node5");
  EXPECT_EQ(first_slurm_host("a-b[7,9]"), "a-b7");
  EXPECT_EQ(first_slurm_host("rack[2-3]-gpu,x"), "rack2-gpu");
  EXPECT_EQ(first_slurm_host("n1,n[2-3]"), "n1");
  EXPECT_EQ(first_slurm_host(""), "");
  EXPECT_EQ(first_slurm_host("n[1-"), "");
  EXPECT_EQ(first_slurm_host("n[]"), "");
}

TEST(RankDevice, LocalRankPicksTheGpuUnlessTheLauncherGaveOne) {
  LaunchEnv e;
  e.rank = 11;
  e.world_size = 16;
  e.local_rank = 3;
  e.local_size = 8;
  EXPECT_EQ(rank_device_index(e, 8, nullptr), 3);            // mpirun / torchrun, all GPUs visible
  EXPECT_EQ(rank_device_index(e, 8, "0,1,2,3,4,5,6,7"), 3);  // the same, listed
  EXPECT_EQ(rank_device_index(e, 1, "5"), 0);                // srun --gpus-per-task=1: its one GPU
  EXPECT_EQ(rank_device_index(e, 8, "GPU-5b3f"), 0);         // one id (a UUID) listed
  EXPECT_NE(error_of([&] { rank_device_index(e, 2, nullptr); }).find("local rank 3 on its host, which has only 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rank_device_index(e, 1, nullptr); }).find("would share its only visible GPU"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rank_device_index(e, 0, nullptr); }).find("no CUDA device is visible"), std::string::npos);
  LaunchEnv single;  // one process on a one-GPU machine
  EXPECT_EQ(rank_device_index(single, 1, nullptr), 0);
  EXPECT_EQ(rank_device_index(single, 4, nullptr), 0);
}

TEST(RankDevice, CpuAndMissingCudaAreHandledWithoutTouchingAGpu) {
  LaunchEnv e;
  EXPECT_TRUE(bind_rank_device(e, "cpu").is_cpu());
  if (!torch::cuda::is_available()) {
    EXPECT_TRUE(bind_rank_device(e, "auto").is_cpu());
    EXPECT_NE(error_of([&] { bind_rank_device(e, "cuda"); }).find("no CUDA device is available"), std::string::npos);
    EXPECT_NE(error_of([&] { bind_rank_device(e, "cuda:1"); }).find("no CUDA device is available"), std::string::npos);
  }
  EXPECT_NE(error_of([&] { bind_rank_device(e, "tpu"); }).find("expected auto, cpu, cuda or cuda:N"),
            std::string::npos);
  synchronize_device(c10::Device(c10::kCPU));  // no-op
}

// scripts/gpu_check.sh runs this on a GPU: the trainer's collectives on a world-1 NCCL group.
TEST(NcclSmoke, WorldOneCollectivesAreExact) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const std::string report = nccl_world1_smoke(0);
  std::printf("%s\n", report.c_str());
  EXPECT_NE(report.find("barrier exact"), std::string::npos);
}

TEST(Gpu, PeakByNameAndMemoryOnCpu) {
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA H100 NVL"), 835e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA H200"), 989e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA H200 NVL"), 835e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA GH200 480GB"), 989e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA A100 80GB PCIe"), 312e12);
  EXPECT_EQ(gpu_peak_bf16_flops("NVIDIA L40S"), 0.0);
  auto p = gpu_peak(c10::Device(c10::kCPU), 0);
  EXPECT_EQ(p.flops, 0.0);
  EXPECT_EQ(p.source, "unknown");
  p = gpu_peak(c10::Device(c10::kCPU), 123e12);
  EXPECT_EQ(p.flops, 123e12);
  EXPECT_EQ(p.source, "config");
  const GpuMemory m = gpu_memory(c10::Device(c10::kCPU));
  EXPECT_EQ(m.allocated + m.reserved + m.peak_allocated + m.peak_reserved, 0);
  reset_gpu_peak_memory(c10::Device(c10::kCPU));
}

TEST(PlanBuckets, ReverseOrderSizeLimitAndDtypes) {
  // 4-byte elements, 100-byte buckets: params 4,3 (reverse) fit together (40+40), 2 starts anew, ...
  auto plan = plan_buckets({10, 30, 10, 10, 10}, {4, 4, 4, 4, 4}, {"f", "f", "f", "f", "f"}, 100);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0].params, (std::vector<size_t>{4, 3}));
  EXPECT_EQ(plan[0].numel, 20);
  EXPECT_EQ(plan[1].params, (std::vector<size_t>{2}));  // 80 + 40 > 100
  EXPECT_EQ(plan[2].params, (std::vector<size_t>{1}));  // 120 bytes: a bucket of its own
  EXPECT_EQ(plan[3].params, (std::vector<size_t>{0}));
}

TEST(PlanBuckets, DtypeChangeSplits) {
  auto plan = plan_buckets({1, 1, 1}, {4, 2, 2}, {"f32", "bf16", "bf16"}, 1 << 20);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].params, (std::vector<size_t>{2, 1}));
  EXPECT_EQ(plan[0].numel, 2);
  EXPECT_EQ(plan[1].params, (std::vector<size_t>{0}));
}

TEST(Comm, SingleProcessIsIdentity) {
  auto comm = Comm::create(LaunchEnv{}, CommOptions{}, c10::kCPU);
  EXPECT_FALSE(comm->distributed());
  at::Tensor t = torch::arange(4, torch::kFloat);
  comm->all_reduce(t);
  EXPECT_TRUE(t.equal(torch::arange(4, torch::kFloat)));
  EXPECT_EQ(comm->sum({1.5, 2.0}), (std::vector<double>{1.5, 2.0}));
  comm->barrier();
}

TEST(Comm, GlooCollectivesTwoRanks) {
  run_ranks(2, [](std::shared_ptr<Comm> c) {
    const double r = c->rank();
    at::Tensor t = torch::full({5}, r + 1.0);
    c->all_reduce(t);  // 1 + 2
    if (!t.equal(torch::full({5}, 3.0))) return false;
    if (c->sum({r, 10.0 * r}) != std::vector<double>{1.0, 10.0}) return false;
    at::Tensor in = torch::arange(6, torch::kFloat) + 100.0 * r;  // [6] on each rank
    at::Tensor out = torch::empty({3});
    c->reduce_scatter(out, in);  // rank r: sum over ranks of in[3r:3r+3]
    at::Tensor want = (torch::arange(6, torch::kFloat) * 2 + 100.0).narrow(0, 3 * c->rank(), 3);
    if (!out.equal(want)) return false;
    at::Tensor gathered = torch::empty({4});
    c->all_gather(gathered, torch::full({2}, r));
    return gathered.equal(torch::tensor({0.f, 0.f, 1.f, 1.f}));
  });
}

// ZeRO-2's Gloo exchange: uneven counts (rank 2 receives nothing), checked against the values each
// sender put at each offset; exact (a copy).
TEST(Comm, GlooAllToAllUnevenThreeRanks) {
  run_ranks(3, [](std::shared_ptr<Comm> c) {
    const int me = c->rank();
    const std::vector<int64_t> counts{2, 3, 0};  // values every rank sends to rank 0, 1, 2
    at::Tensor in = torch::arange(5, torch::kFloat) + 10.0 * me;  // [5]: 2 for rank 0, then 3 for rank 1
    at::Tensor out = torch::full({3 * counts[me]}, -1.0);
    c->all_to_all_async(out, in, std::vector<int64_t>(3, counts[me]), counts).wait();
    const int64_t offset = me == 0 ? 0 : 2;
    for (int from = 0; from < 3; ++from)
      for (int64_t k = 0; k < counts[me]; ++k)
        if (out[from * counts[me] + k].item<float>() != static_cast<float>(offset + k + 10.0 * from)) return false;
    return true;
  });
}

TEST(BufferPool, ReusesWithinTheCapAndFreesBeyondIt) {
  BufferPool pool;
  pool.set_cap(4 * 100);  // 100 fp32 values
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  at::Tensor a = pool.take(60, f32);
  const void* where = a.data_ptr();
  pool.give(a);
  EXPECT_EQ(pool.kept_bytes(), 4 * 60);
  a = at::Tensor();
  at::Tensor none = pool.take(0, f32);  // an empty receive does not take the kept buffer
  EXPECT_EQ(pool.kept_bytes(), 4 * 60);
  pool.give(none);
  at::Tensor b = pool.take(40, f32);  // the kept 60-value buffer fits: reused, not allocated
  EXPECT_EQ(b.data_ptr(), where);
  EXPECT_EQ(b.numel(), 60);
  at::Tensor other = pool.take(30, torch::TensorOptions().dtype(torch::kBFloat16));  // another dtype: new
  EXPECT_EQ(other.scalar_type(), torch::kBFloat16);
  EXPECT_NE(other.data_ptr(), where);
  at::Tensor big = pool.take(50, f32);  // 60 + 15 (bf16) + 50 in use: over the cap, still handed out
  pool.give(b);                         // in use + kept would exceed the cap: freed
  EXPECT_EQ(pool.kept_bytes(), 0) << "a buffer given back beyond the cap must not be kept";
  pool.give(big);
  EXPECT_EQ(pool.kept_bytes(), 4 * 50);  // 60 bytes in use (bf16) + 200 kept: within the cap
}

// True when every parameter's .grad lies inside one of the reducer's buckets (gradient as bucket
// view), i.e. backward accumulated in place instead of replacing .grad.
bool grads_in_buckets(const GradReducer& red, const std::vector<at::Tensor>& params, const char* when) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& g = params[i].grad();
    bool inside = false;
    for (size_t b = 0; g.defined() && b < red.num_buckets() && !inside; ++b) {
      const at::Tensor f = red.bucket(b);
      const auto* lo = static_cast<const char*>(f.const_data_ptr());
      const auto* p = static_cast<const char*>(g.const_data_ptr());
      inside = p >= lo && p + g.nbytes() <= lo + f.nbytes() && g.is_contiguous();
    }
    if (!inside) {
      std::fprintf(stderr, "%s: parameter %zu's .grad is %s a view of a reducer bucket\n", when, i,
                   g.defined() ? "not" : "undefined, not");
      return false;
    }
  }
  return true;
}

// The reducer's sums equal plain autograd over both ranks' data (computed on each rank locally),
// for two steps; the gradients stay views of the buckets through backward (the first micro-step
// included), the all-reduce, zero_grad() and the next step, and nothing is ever copied in.
TEST(GradReducer, SumsGradientsOfTheLastMicroStepAcrossRanks) {
  run_ranks(2, [](std::shared_ptr<Comm> c) {
    torch::manual_seed(7);
    torch::nn::Sequential net(torch::nn::Linear(6, 16), torch::nn::Tanh(), torch::nn::Linear(16, 3));
    torch::nn::Sequential ref(torch::nn::Linear(6, 16), torch::nn::Tanh(), torch::nn::Linear(16, 3));
    {
      torch::NoGradGuard ng;
      for (size_t i = 0; i < net->parameters().size(); ++i) ref->parameters()[i].copy_(net->parameters()[i]);
    }
    const auto params = net->parameters();
    // Tiny buckets (~ 100 bytes) so several all-reduces are in flight during backward.
    GradReducer red(c, params, 100.0 / (1024 * 1024));
    if (red.num_buckets() < 3) return false;
    if (!grads_in_buckets(red, params, "after construction")) return false;
    auto data = [](int step, int rank, int micro) {
      torch::manual_seed(100 + 1000 * step + 10 * rank + micro);
      return torch::randn({4, 6});
    };
    for (int step = 0; step < 2; ++step) {
      for (int micro = 0; micro < 2; ++micro) {
        if (micro == 1) red.arm();
        net->forward(data(step, c->rank(), micro)).pow(2).sum().backward();
        if (!grads_in_buckets(red, params, micro == 0 ? "after the first backward" : "after the last backward"))
          return false;
      }
      red.finish();
      if (!grads_in_buckets(red, params, "after finish")) return false;
      ref->zero_grad(true);
      for (int rank = 0; rank < 2; ++rank)
        for (int micro = 0; micro < 2; ++micro) ref->forward(data(step, rank, micro)).pow(2).sum().backward();
      // fp32 sums in a different order: rtol 1e-5.
      for (size_t i = 0; i < params.size(); ++i)
        if (!close(params[i].grad(), ref->parameters()[i].grad(), 1e-5, 1e-6, "grad")) return false;
      red.zero_grad();
      if (!grads_in_buckets(red, params, "after zero_grad")) return false;
      for (const auto& p : params)
        if (p.grad().abs().max().item<float>() != 0.0f) return false;
    }
    return red.copied_gradients() == 0;
  });
}

// A gradient set to None (or replaced) between steps still takes part in the sum: the reducer copies
// it back into its bucket, re-points .grad, and counts the copy.
TEST(GradReducer, ReplacedGradientsAreCopiedBackIn) {
  run_ranks(2, [](std::shared_ptr<Comm> c) {
    torch::manual_seed(7);
    torch::nn::Linear net(5, 4);
    const auto params = net->parameters();
    GradReducer red(c, params, 25.0);
    const auto x = torch::full({2, 5}, static_cast<float>(c->rank() + 1));
    std::vector<at::Tensor> want;
    {
      // Reference: the same loss on both ranks' inputs, by autograd in one process.
      torch::nn::Linear ref(5, 4);
      torch::NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) ref->parameters()[i].copy_(params[i]);
      torch::AutoGradMode on(true);
      for (int r = 0; r < 2; ++r) ref->forward(torch::full({2, 5}, static_cast<float>(r + 1))).sum().backward();
      for (const auto& p : ref->parameters()) want.push_back(p.grad().clone());
    }
    for (auto p : params) p.mutable_grad() = at::Tensor();  // what zero_grad(set_to_none) would do
    red.arm();
    net->forward(x).sum().backward();
    red.finish();
    if (red.copied_gradients() != static_cast<int64_t>(params.size())) return false;
    if (!grads_in_buckets(red, params, "after the copy-in")) return false;
    for (size_t i = 0; i < params.size(); ++i)
      if (!close(params[i].grad(), want[i], 1e-6, 1e-6, "grad")) return false;
    return true;
  });
}

// ZeRO-1 over 2 ranks = torch::optim::AdamW on the summed gradients, with clipping and decay groups;
// then the shards written by 2 ranks restore into a 1-rank optimizer (different world size).
TEST(ZeroOptimizer, MatchesTorchAdamWAndReshardsOnLoad) {
  const fs::path dir = fs::temp_directory_path() / ("sftgo_zero_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const optim::RuleOptions ao{"adamw", 1e-2, 0.9, 0.95, 1e-8, 0.1};
  auto make = [] {
    torch::manual_seed(3);
    return optim::NamedParameters{
        {"layers.0.weight", torch::randn({5, 7}).set_requires_grad(true)},
        {"layers.0.norm.weight", torch::randn({7}).set_requires_grad(true)},
        {"head.weight", torch::randn({3, 5}).set_requires_grad(true)}};  // 35+7+15 = 57: padded
  };
  auto grads = [](int rank, int step, const optim::NamedParameters& ps) {
    torch::manual_seed(1000 + 17 * rank + step);
    for (auto& [n, p] : ps) p.mutable_grad() = torch::randn(p.sizes()) * (step + 1);
  };
  run_ranks(2, [&](std::shared_ptr<Comm> c) {
    auto mine = make(), ref = make();
    ZeroOptimizer zero(c, mine, ao);
    // LibTorch's own AdamW (an independent reference, not the rule under test), sftgo's decay groups.
    std::vector<torch::Tensor> decayed, plain;
    for (const auto& [n, p] : ref) (optim::decays(n, p) ? decayed : plain).push_back(p);
    auto with = torch::optim::AdamWOptions(ao.lr).betas({ao.beta1, ao.beta2}).eps(ao.eps).weight_decay(ao.weight_decay);
    auto without = with;
    without.weight_decay(0.0);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(with));
    groups.emplace_back(plain, std::make_unique<torch::optim::AdamWOptions>(without));
    auto adamw = std::make_unique<torch::optim::AdamW>(std::move(groups), with);
    for (int step = 0; step < 4; ++step) {
      grads(c->rank(), step, mine);
      const double norm = zero.step(1e-2, 5.0);
      // Reference: the summed gradient of both ranks, clipped and stepped by LibTorch's AdamW.
      optim::NamedParameters other = make();
      grads(1 - c->rank(), step, other);
      grads(c->rank(), step, ref);
      std::vector<at::Tensor> ps;
      for (size_t i = 0; i < ref.size(); ++i) {
        ref[i].second.mutable_grad().add_(other[i].second.grad());
        ps.push_back(ref[i].second);
      }
      const double ref_norm = optim::clip_grad_norm(ps, 5.0);
      adamw->step();
      if (std::abs(norm - ref_norm) > 1e-6 * ref_norm) return false;
      zero.zero_grad();
      adamw->zero_grad(true);
    }
    // fp32 element-wise math identical up to summation order of the norm: rtol 1e-5.
    for (size_t i = 0; i < mine.size(); ++i)
      if (!close(mine[i].second, ref[i].second, 1e-5, 1e-6, mine[i].first.c_str())) return false;
    zero.save_shard((dir / zero_shard_file_name(c->rank(), 2)).string());
    if (c->rank() == 0) {
      std::vector<at::Tensor> final_params;
      for (auto& [n, p] : mine) final_params.push_back(p.detach().clone());
      torch::save(final_params, (dir / "final.pt").string());
    }
    return true;
  });
  // One rank restores both shards: its master weights are the 2-rank run's parameters.
  auto comm = Comm::create(LaunchEnv{}, CommOptions{}, c10::kCPU);
  auto params = make();
  ZeroOptimizer one(comm, params, ao);
  one.load_shards({(dir / zero_shard_file_name(0, 2)).string(), (dir / zero_shard_file_name(1, 2)).string()});
  EXPECT_EQ(one.steps(), 4);
  std::vector<at::Tensor> want;
  torch::load(want, (dir / "final.pt").string());
  ASSERT_EQ(want.size(), params.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_TRUE(params[i].second.equal(want[i])) << params[i].first;                    // bit-exact copy
  EXPECT_THROW(one.load_shards({(dir / zero_shard_file_name(0, 2)).string()}), Error);  // half is missing

  // Issue 23, item 7: a rank opens only the shard files whose slice overlaps its own. Two ranks resume
  // with the other rank's file replaced by junk of the same name (before, every rank read every file
  // and failed on it); three ranks (another world size) resume from both files.
  fs::create_directories(dir / "junk");
  for (int r = 0; r < 2; ++r) std::ofstream(dir / "junk" / zero_shard_file_name(r, 2)) << "not a shard";
  auto resumed_equals_final = [&](std::shared_ptr<Comm> c, const std::vector<std::string>& paths) {
    auto ps = make();
    ZeroOptimizer z(c, ps, ao);
    z.load_shards(paths);
    std::vector<at::Tensor> final_params;
    torch::load(final_params, (dir / "final.pt").string());
    for (size_t i = 0; i < ps.size(); ++i)
      if (!ps[i].second.equal(final_params[i])) return false;
    return z.steps() == 4;
  };
  run_ranks(2, [&](std::shared_ptr<Comm> c) {
    const int r = c->rank();
    return resumed_equals_final(c, {(dir / zero_shard_file_name(r, 2)).string(),
                                    (dir / "junk" / zero_shard_file_name(1 - r, 2)).string()});
  });
  run_ranks(3, [&](std::shared_ptr<Comm> c) {
    return resumed_equals_final(c, {(dir / zero_shard_file_name(0, 2)).string(),
                                    (dir / zero_shard_file_name(1, 2)).string()});
  });
  fs::remove_all(dir);
}

namespace {

// Momentum SGD, registered from this file: m = 0.9 m + g, p -= lr * m (state "velocity").
struct MomentumSgd final : optim::UpdateRule {
  std::string name() const override { return "test_momentum_sgd"; }
  std::vector<std::string> state_names() const override { return {"velocity"}; }
  void apply(const at::Tensor& p, const at::Tensor& g, at::TensorList s, double lr, int64_t) const override {
    s[0].mul_(0.9).add_(g);
    p.add_(s[0], -lr);
  }
};

void register_momentum_sgd() {
  static const bool once = [] {
    optim::register_update_rule("test_momentum_sgd",
                                [](const optim::RuleOptions&) { return std::make_unique<MomentumSgd>(); });
    return true;
  }();
  (void)once;
}

}  // namespace

// That rule on 2 ranks' ZeRO-1 shards: equal to the formula applied in double to the summed, clipped
// gradients (the shard boundary and the padding cut through parameters). Tolerance 1e-5 relative: fp32
// against double over 3 steps of values ~1.
TEST(ZeroOptimizer, AppliesARuleRegisteredByATest) {
  register_momentum_sgd();
  const optim::RuleOptions ro{"test_momentum_sgd", 1.0, 0.9, 0.95, 1e-8, 0.1};
  auto make = [] {
    torch::manual_seed(4);
    return optim::NamedParameters{{"a.weight", torch::randn({3, 5}).set_requires_grad(true)},
                                  {"a.norm.weight", torch::randn({4}).set_requires_grad(true)}};  // 19: padded
  };
  auto grad_of = [](int rank, int step, const at::Tensor& p) {
    torch::manual_seed(300 + 11 * rank + step);
    return torch::randn(p.sizes());
  };
  const double lr = 0.1, clip = 3.0;
  run_ranks(2, [&](std::shared_ptr<Comm> c) {
    auto mine = make(), ref = make();
    ZeroOptimizer zero(c, mine, ro);
    std::vector<at::Tensor> p, m;
    for (auto& [n, t] : ref) {
      p.push_back(t.detach().to(at::kDouble));
      m.push_back(torch::zeros_like(p.back()));
    }
    for (int step = 0; step < 3; ++step) {
      std::vector<at::Tensor> g;
      double sq = 0;
      for (size_t i = 0; i < mine.size(); ++i) {
        mine[i].second.mutable_grad() = grad_of(c->rank(), step, mine[i].second);
        g.push_back((grad_of(0, step, p[i]) + grad_of(1, step, p[i])).to(at::kDouble));
        sq += g.back().pow(2).sum().item<double>();
      }
      const double norm = zero.step(lr, clip, true);
      if (std::abs(norm - std::sqrt(sq)) > 1e-6 * norm) return false;
      const double scale = norm > clip ? clip / (std::sqrt(sq) + 1e-6) : 1.0;
      for (size_t i = 0; i < p.size(); ++i) {
        if (i == 0) p[i] *= 1 - lr * 0.1;  // the 2-D weight decays, the norm weight does not
        m[i] = 0.9 * m[i] + scale * g[i];
        p[i] -= lr * m[i];
      }
      zero.zero_grad();
    }
    for (size_t i = 0; i < mine.size(); ++i)
      if (!close(mine[i].second.to(at::kDouble), p[i], 1e-5, 1e-6, mine[i].first.c_str())) return false;
    return true;
  });
}

// Shards written before the update rules (no "update_rule" entry) are AdamW's: they restore into the
// AdamW rule, and a run with another rule refuses them, naming both.
TEST(ZeroOptimizer, ShardsWithoutARuleNameAreAdamWs) {
  register_momentum_sgd();
  const fs::path dir = fs::temp_directory_path() / ("sftgo_zero_old_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / zero_shard_file_name(0, 1)).string();
  {
    torch::serialize::OutputArchive a;  // what ZeroAdamW::save_shard wrote
    a.write("master", torch::arange(6, torch::kFloat));
    a.write("exp_avg", torch::full({6}, 0.5f));
    a.write("exp_avg_sq", torch::full({6}, 0.25f));
    a.write("range", torch::tensor({int64_t{0}, int64_t{6}, int64_t{6}, int64_t{3}}, torch::kInt64));
    a.write("rank_world", torch::tensor({int64_t{0}, int64_t{1}}, torch::kInt64));
    a.save_to(path);
  }
  auto comm = Comm::create(LaunchEnv{}, CommOptions{}, c10::kCPU);
  optim::NamedParameters ps = {{"w.weight", torch::zeros({2, 3}).set_requires_grad(true)}};
  ZeroOptimizer adamw(comm, ps, optim::RuleOptions{});
  adamw.load_shards({path});
  EXPECT_EQ(adamw.steps(), 3);
  EXPECT_TRUE(ps[0].second.equal(torch::arange(6, torch::kFloat).view({2, 3})));
  ZeroOptimizer other(comm, ps, optim::RuleOptions{"test_momentum_sgd"});
  try {
    other.load_shards({path});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("saved by update rule 'adamw', but optim.name is 'test_momentum_sgd'"),
              std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

// Which saved shard files a rank's slice needs, by their names alone: 57 values saved by 2 ranks
// (slices [0, 29), [29, 58)), resumed by 3 ([0, 19), [19, 38), [38, 57)) or by 2 again.
TEST(ZeroOptimizer, ShardFilesOverlappingARanksSlice) {
  const std::vector<std::string> two = {"/c/" + zero_shard_file_name(0, 2), "/c/" + zero_shard_file_name(1, 2)};
  using V = std::vector<std::string>;
  EXPECT_EQ(zero_shards_overlapping(two, 57, 0, 19), V{two[0]});
  EXPECT_EQ(zero_shards_overlapping(two, 57, 19, 19), two);
  EXPECT_EQ(zero_shards_overlapping(two, 57, 38, 19), V{two[1]});
  EXPECT_EQ(zero_shards_overlapping(two, 57, 0, 29), V{two[0]});
  EXPECT_EQ(zero_shards_overlapping(two, 57, 29, 29), V{two[1]});
  EXPECT_EQ(zero_shards_overlapping(two, 5, 5, 1), V{});  // a rank holding only padding
  try {
    zero_shards_overlapping({"/c/zero_rank1_of_2.pt"}, 57, 0, 19);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("/c/zero_rank1_of_2.pt: not a ZeRO-1 shard file name"), std::string::npos)
        << e.what();
  }
}

// Issue 25 item 9: zero_manifest.json ties a checkpoint's shard files together. The digest covers every
// byte (a change in the last block counts) and the manifest parses back, refusing entries that do not
// name rank r of the world in order.
TEST(ZeroManifest, DigestsAndRoundTrip) {
  const fs::path dir = fs::temp_directory_path() / "sftgo_test_zero_manifest";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string bytes((size_t{3} << 20) + 5, 'x');  // three full 1 MiB blocks and a tail
  std::ofstream(dir / "a.pt", std::ios::binary) << bytes;
  bytes.back() = 'y';
  std::ofstream(dir / "b.pt", std::ios::binary) << bytes;
  const ZeroShardDigest a = zero_shard_digest((dir / "a.pt").string()), b = zero_shard_digest((dir / "b.pt").string());
  EXPECT_EQ(a.bytes, bytes.size());
  EXPECT_EQ(a.file, "a.pt");
  EXPECT_EQ(a.hash.size(), 16u);
  EXPECT_NE(a.hash, b.hash);
  EXPECT_EQ(a.hash, zero_shard_digest((dir / "a.pt").string()).hash);
  const std::vector<ZeroShardDigest> two = {{zero_shard_file_name(0, 2), 10, a.hash}, {zero_shard_file_name(1, 2), 11, b.hash}};
  const auto back = parse_zero_manifest(zero_manifest_json(2, two), "m.json");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[1].file, zero_shard_file_name(1, 2));
  EXPECT_EQ(back[1].bytes, 11u);
  EXPECT_EQ(back[1].hash, b.hash);
  const std::vector<ZeroShardDigest> swapped = {two[1], two[0]};
  EXPECT_THROW(parse_zero_manifest(zero_manifest_json(2, swapped), "m.json"), Error);
  EXPECT_THROW(parse_zero_manifest(zero_manifest_json(3, two), "m.json"), Error);
  EXPECT_THROW(parse_zero_manifest("{\"format\": \"sftgo-zero-manifest\"", "m.json"), Error);
  fs::remove_all(dir);
}
