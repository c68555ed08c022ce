// Gloo is compiled in through c10d's header; the define must precede it (the wheel ships the
// header but not the define; gloo's own headers come from Debian's libgloo-dev).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>

#include "backend.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"

namespace sftgo::dist {
namespace {

constexpr auto kHeartbeatPeriod = std::chrono::milliseconds(500);

std::string hb_key(int r) { return "sftgo/hb/" + std::to_string(r); }
std::string done_key(int r) { return "sftgo/done/" + std::to_string(r); }

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

[[noreturn]] void fatal_exit(const std::string& message, int code) {
  log_error("{}", message);
  std::fflush(stderr);
  std::fflush(stdout);
  std::_Exit(code);
}

Comm::Impl::~Impl() {
  stop_watchdog = true;
  if (watchdog.joinable()) watchdog.join();
}

void Work::wait() {
  if (!impl_ || !impl_->work) return;
  try {
    impl_->work->wait();
  } catch (const std::exception& e) {
    fatal_exit(impl_->comm->describe_failure(impl_->what + ": " + e.what()));
  }
}

namespace {
// A process group of every rank of `c` (its backend, store and timeout), its keys under `prefix`.
c10::intrusive_ptr<c10d::Backend> make_group(const Comm& c, const Comm::Impl& impl, const std::string& prefix) {
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix, impl.store);
  try {
    if (c.backend() == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(impl.timeout);
      o->devices.push_back(impl.loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                         : c10d::ProcessGroupGloo::createDefaultDevice());
      return c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, c.rank(), c.world_size(), o);
    }
    SFTGO_CHECK(nccl_available(), ErrorKind::kConfig,
                "dist.backend nccl: this build has no NCCL process group "
                "(built without the CUDA toolkit)");
    return make_nccl_backend(prefixed, c.rank(), c.world_size(), impl.timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    SFTGO_FAIL(ErrorKind::kDist, "rank ", c.rank(), ": creating the ", c.backend(), " process group failed: ", e.what());
  }
}
}  // namespace

std::shared_ptr<Comm> Comm::subgroup(const std::string& name) const {
  std::shared_ptr<Comm> c(new Comm());
  c->rank_ = rank_;
  c->world_ = world_;
  c->device_ = device_;
  c->backend_ = backend_;
  c->impl_ = std::make_unique<Impl>();
  if (world_ == 1) return c;
  c->impl_->store = impl_->store;
  c->impl_->store_addr = impl_->store_addr;
  c->impl_->timeout = impl_->timeout;
  c->impl_->loopback = impl_->loopback;
  c->impl_->pg = make_group(*c, *c->impl_, "sftgo/pg/" + name);
  return c;
}

std::shared_ptr<Comm> Comm::create(const LaunchEnv& env, const CommOptions& options, c10::Device device) {
  std::shared_ptr<Comm> c(new Comm());
  c->rank_ = env.rank;
  c->world_ = env.world_size;
  c->device_ = device;
  c->impl_ = std::make_unique<Impl>();
  if (env.world_size == 1) return c;

  std::string backend = options.backend;
  if (backend == "auto") backend = device.is_cuda() ? "nccl" : "gloo";
  SFTGO_CHECK(backend == "gloo" || backend == "nccl", ErrorKind::kConfig, "dist.backend '", backend,
              "' is not one of auto, gloo, nccl");
  SFTGO_CHECK_HINT(backend != "nccl" || device.is_cuda(), ErrorKind::kConfig, "use dist.backend: gloo on CPU",
                   "dist.backend nccl needs model.device cuda");
  SFTGO_CHECK_HINT(backend != "gloo" || !device.is_cuda(), ErrorKind::kConfig, "use dist.backend: nccl or auto on GPUs",
                   "dist.backend gloo with CUDA tensors is not supported by this build");
  c->backend_ = backend;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000.0));
  c->impl_->timeout = timeout;
  c->impl_->store_addr = env.master_addr + ":" + std::to_string(env.master_port);

  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0 && !env.agent_store;
  so.numWorkers = static_cast<size_t>(env.world_size);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    c->impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    SFTGO_FAIL_HINT(ErrorKind::kDist,
                    "check MASTER_ADDR/MASTER_PORT (or dist.master_addr/master_port) and that every rank started",
                    "rank ", env.rank, "/", env.world_size, ": rendezvous at ", c->impl_->store_addr, " failed within ",
                    options.timeout_s, " s: ", e.what());
  }
  // Bind to the address the ranks rendezvous on, so single-host jobs never depend on the hostname resolving.
  c->impl_->loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
  c->impl_->pg = make_group(*c, *c->impl_, "sftgo/pg");
  c->impl_->store->add(hb_key(env.rank), 1);
  stop_with_launcher(env);
  if (env.rank == 0 && env.launcher == "mpirun" && env.kill_grace_s < 30)
    log_info(
        "on Ctrl-C mpirun sends the ranks SIGTERM after {:.0f} s and SIGKILL {:.0f} s later; to save a "
        "checkpoint then, a step plus a save must fit in {:.0f} s: start mpirun with --mca "
        "odls_base_sigkill_timeout <seconds> (docs/architecture.md, data parallelism)",
        env.kill_grace_s, env.kill_grace_s, env.kill_grace_s);
  return c;
}

namespace {
// Starts a collective and wraps it for wait(); a failure to even start it is the same fatal,
// rank-naming exit as a failed wait.
template <typename Start>
Work start_collective(Comm* comm, std::string what, Start&& start) {
  auto w = std::make_shared<Work::Impl>();
  w->comm = comm;
  w->what = std::move(what);
  try {
    w->work = start();
  } catch (const std::exception& e) {
    fatal_exit(comm->describe_failure(w->what + ": " + e.what()));
  }
  return Work(w);
}
}  // namespace

Comm::~Comm() = default;

Work Comm::all_reduce_async(at::Tensor& t) {
  if (world_ == 1) return {};
  std::vector<at::Tensor> ts{t};
  return start_collective(this, "all-reduce of " + std::to_string(t.numel()) + " values",
                          [&] { return impl_->pg->allreduce(ts, c10d::AllreduceOptions{}); });
}

void Comm::all_reduce(at::Tensor& t) { all_reduce_async(t).wait(); }

void Comm::reduce_scatter(at::Tensor& out, const at::Tensor& in) {
  SFTGO_CHECK(in.numel() == out.numel() * world_, ErrorKind::kInternal, "reduce_scatter: input has ", in.numel(),
              " values, expected ", out.numel() * world_);
  if (world_ == 1) {
    out.copy_(in);
    return;
  }
  at::Tensor input = in.contiguous();
  start_collective(this, "reduce-scatter of " + std::to_string(in.numel()) + " values", [&] {
    return impl_->pg->_reduce_scatter_base(out, input, c10d::ReduceScatterOptions{});
  }).wait();
}

Work Comm::reduce_async(at::Tensor& t, int root) {
  if (world_ == 1) return {};
  std::vector<at::Tensor> ts{t};
  c10d::ReduceOptions opts;
  opts.rootRank = root;
  return start_collective(this, "reduce of " + std::to_string(t.numel()) + " values to rank " + std::to_string(root),
                          [&] { return impl_->pg->reduce(ts, opts); });
}

Work Comm::all_to_all_async(at::Tensor& out, at::Tensor& in, std::vector<int64_t> out_counts,
                            std::vector<int64_t> in_counts) {
  const auto total = [](const std::vector<int64_t>& c) { return std::accumulate(c.begin(), c.end(), int64_t{0}); };
  SFTGO_CHECK(static_cast<int>(out_counts.size()) == world_ && static_cast<int>(in_counts.size()) == world_ &&
                  total(out_counts) == out.numel() && total(in_counts) == in.numel(),
              ErrorKind::kInternal, "all_to_all: counts do not match ", world_, " ranks, ", out.numel(), " and ",
              in.numel(), " values");
  if (world_ == 1) {
    out.copy_(in);
    return {};
  }
  return start_collective(this, "all-to-all of " + std::to_string(in.numel()) + " values", [&] {
    return impl_->pg->alltoall_base(out, in, out_counts, in_counts, c10d::AllToAllOptions{});
  });
}

Work Comm::broadcast_async(at::Tensor& t, int root) {
  if (world_ == 1) return {};
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  return start_collective(this,
                          "broadcast of " + std::to_string(t.numel()) + " values from rank " + std::to_string(root),
                          [&] { return impl_->pg->broadcast(ts, opts); });
}

void Comm::all_gather(at::Tensor& out, const at::Tensor& in) {
  SFTGO_CHECK(out.numel() == in.numel() * world_, ErrorKind::kInternal, "all_gather: output has ", out.numel(),
              " values, expected ", in.numel() * world_);
  if (world_ == 1) {
    out.copy_(in);
    return;
  }
  at::Tensor input = in.contiguous();
  start_collective(this, "all-gather of " + std::to_string(out.numel()) + " values", [&] {
    return impl_->pg->_allgather_base(out, input, c10d::AllgatherOptions{});
  }).wait();
}

std::vector<double> Comm::sum(const std::vector<double>& values) {
  if (world_ == 1 || values.empty()) return values;
  at::Tensor t = torch::tensor(values, torch::kFloat64).to(device_);
  all_reduce(t);
  t = t.cpu();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

void Comm::barrier() {
  if (world_ == 1) return;
  start_collective(this, "barrier", [&] {
    c10d::BarrierOptions o;
    if (device_.is_cuda()) o.device_ids = {device_.index()};
    return impl_->pg->barrier(o);
  }).wait();
}

std::string Comm::describe_failure(const std::string& what) {
  std::string head = format("rank {}/{}: {} failed", rank_, world_, what);
  if (world_ == 1 || !impl_->store) return head;
  // Heartbeats advance every 0.5 s on live ranks; one that does not move over 2 s is dead or hung.
  try {
    std::map<int, int64_t> first;
    for (int r = 0; r < world_; ++r)
      if (r != rank_) first[r] = impl_->store->add(hb_key(r), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    std::string silent;
    for (auto& [r, v] : first)
      if (impl_->store->add(hb_key(r), 0) == v && impl_->store->add(done_key(r), 0) == 0)
        silent += (silent.empty() ? "" : ", ") + std::to_string(r);
    if (!silent.empty()) return format("{}; rank {} stopped responding (dead or hung); exiting", head, silent);
    return head + "; every rank still sends heartbeats (a collective mismatch or network error?)";
  } catch (const std::exception&) {
    return format("{}; the rendezvous store at {} is gone: rank 0 (its host) or the launcher died; exiting", head,
                  impl_->store_addr);
  }
}

void Comm::start_watchdog() {
  if (world_ == 1 || impl_->watchdog.joinable()) return;
  Impl* im = impl_.get();
  const int me = rank_, world = world_;
  im->watchdog = std::thread([im, me, world] {
    std::vector<int64_t> last(static_cast<size_t>(world), -1);
    std::vector<double> changed(static_cast<size_t>(world), now_s());
    const double limit = std::chrono::duration<double>(im->timeout).count();
    while (!im->stop_watchdog) {
      try {
        im->store->add(hb_key(me), 1);
        for (int r = 0; r < world && !im->stop_watchdog; ++r) {
          if (r == me) continue;
          const int64_t v = im->store->add(hb_key(r), 0);
          const double t = now_s();
          if (v != last[static_cast<size_t>(r)]) {
            last[static_cast<size_t>(r)] = v;
            changed[static_cast<size_t>(r)] = t;
          } else if (t - changed[static_cast<size_t>(r)] > limit && im->store->add(done_key(r), 0) == 0) {
            fatal_exit(
                format("rank {}: rank {} sent no heartbeat for {:.0f} s (dist.timeout_s = {:.0f}): it died or hangs; "
                       "exiting",
                       me, r, t - changed[static_cast<size_t>(r)], limit));
          }
        }
      } catch (const std::exception& e) {
        if (im->stop_watchdog) return;
        fatal_exit(
            format("rank {}: lost the rendezvous store at {} ({}): rank 0 (its host) or the launcher died; "
                   "exiting",
                   me, im->store_addr, e.what()));
      }
      std::this_thread::sleep_for(kHeartbeatPeriod);
    }
  });
}

void Comm::shutdown() {
  if (world_ == 1) return;
  barrier();
  impl_->store->add(done_key(rank_), 1);
  impl_->stop_watchdog = true;
  if (impl_->watchdog.joinable()) impl_->watchdog.join();
  // After this no watchdog touches the store, so rank 0 (its host) may exit first.
  barrier();
}

}  // namespace sftgo::dist
