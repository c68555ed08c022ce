// bench_loss: time and peak memory of the fused SFT-GO loss (one-pass and two-pass paths) vs the
// materialised reference vs plain unfused CE (matmul + at::cross_entropy), forward + backward, side by
// side in one run.
//
//   bench_loss [--device cpu|cuda] [--sizes T,H,V;T,H,V...] [--iters N] [--threads N] [--dtype f32|bf16]
//              [--onepass-tokens N]   (tokens per block of the one-pass variants; 0 = auto, the 10% budget)
//              [--variants KEY,KEY..] (default all: unfused,reference,sftgo-2p,sftgo-1p,ce-1p,ce-2p,
//                                      sftgo-auto,ce-auto; the large shapes take minutes per variant on CPU)
//
// Results are validated before timing (fused vs reference gradients, fused ce vs at::cross_entropy)
// and the run aborts on a mismatch. CPU: every variant runs in its own forked child, so its peak RSS
// (VmHWM after resetting it through /proc/self/clear_refs) is not polluted by the others; glibc is
// told to mmap every allocation >= 1 MiB so freed tensors leave the RSS. CUDA: one process, the
// caching allocator's peak stats reset around each variant.
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#ifdef SFTGO_BENCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "sftgo/core/timer.h"
#include "reference_loss.h"  // the test oracle, tests/loss (sftgo_loss_reference)
#include "sftgo/loss/group_loss.h"

namespace {

using sftgo::loss::FusedLossOptions;
using sftgo::loss::Objective;

struct Size {
  int64_t t, h, v;
};

struct Config {
  std::string device = "cpu";
  std::vector<Size> sizes;
  int iters = 2;  // the first is a warm-up unless iters == 1; the fastest of the others is reported
  int threads = 2;
  at::ScalarType dtype = at::kFloat;
  int64_t onepass_tokens = 0;
  std::string variants;  // comma-separated keys; empty = all
};

int64_t g_onepass_tokens = 0;  // Config::onepass_tokens, for forward()

struct Inputs {
  at::Tensor hidden;  // [T, H]
  at::Tensor weight;  // [V, H]
  at::Tensor labels;  // [T]
  at::Tensor groups;  // [T] int8
};

Inputs make_inputs(const Size& s, const Config& cfg, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Inputs in;
  in.hidden = at::randn({s.t, s.h}, gen, at::kFloat);
  in.weight = at::randn({s.v, s.h}, gen, at::kFloat) * (2.0 / std::sqrt(static_cast<double>(s.h)));
  in.labels = at::randint(0, s.v, {s.t}, gen, at::kLong);
  in.labels.masked_fill_(at::rand({s.t}, gen) < 0.1, -100);  // ~10% ignored, like a short prompt
  in.groups = (at::rand({s.t}, gen) < 0.4).to(at::kChar);
  const at::Device dev = cfg.device == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  in.hidden = in.hidden.to(dev, cfg.dtype);
  in.weight = in.weight.to(dev, cfg.dtype);
  in.labels = in.labels.to(dev);
  in.groups = in.groups.to(dev);
  return in;
}

// fused sftgo 2-pass: lambda = 0.5, weights from this forward's stats (the worst group is unknown
// until all tokens are seen). fused sftgo known: the same loss with the coefficients fixed ahead,
// as the trainer does under scope=step after its stats pre-pass (one pass). fused ce 1-pass / 2-pass:
// lambda = 0 / objective ce through each path (kAuto picks one pass here).
// The auto variants leave the choice to kAuto (the "1p rows" column says which path ran): the sftgo
// one with the step weights known ahead (what the trainer passes as known_weights), the ce one plain SFT.
enum class Variant {
  kFusedSftGo,
  kFusedSftGoKnown,
  kFusedCe,
  kFusedCeTwoPass,
  kReference,
  kUnfusedCe,
  kFusedSftGoAuto,
  kFusedCeAuto
};
constexpr Variant kVariants[] = {Variant::kUnfusedCe,       Variant::kReference,  Variant::kFusedSftGo,
                                 Variant::kFusedSftGoKnown, Variant::kFusedCe,    Variant::kFusedCeTwoPass,
                                 Variant::kFusedSftGoAuto,  Variant::kFusedCeAuto};

const char* variant_key(Variant v) {
  switch (v) {
    case Variant::kFusedSftGo: return "sftgo-2p";
    case Variant::kFusedSftGoKnown: return "sftgo-1p";
    case Variant::kFusedCe: return "ce-1p";
    case Variant::kFusedCeTwoPass: return "ce-2p";
    case Variant::kReference: return "reference";
    case Variant::kUnfusedCe: return "unfused";
    case Variant::kFusedSftGoAuto: return "sftgo-auto";
    case Variant::kFusedCeAuto: return "ce-auto";
  }
  return "?";
}

bool selected(Variant v, const std::string& list) {
  if (list.empty()) return true;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == variant_key(v)) return true;
  }
  return false;
}

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::kFusedSftGo: return "fused sftgo 2p";
    case Variant::kFusedSftGoKnown: return "fused sftgo 1p*";
    case Variant::kFusedCe: return "fused ce 1p";
    case Variant::kFusedCeTwoPass: return "fused ce 2p";
    case Variant::kReference: return "reference sftgo";
    case Variant::kUnfusedCe: return "unfused CE";
    case Variant::kFusedSftGoAuto: return "fused sftgo auto*";
    case Variant::kFusedCeAuto: return "fused ce auto";
  }
  return "?";
}

int64_t g_onepass_rows_used = 0;  // LossInfo::onepass_tokens of the last fused forward

// The coefficients of the sftgo variant from a no-grad forward (the trainer's stats pre-pass; not timed).
sftgo::loss::LossWeights sftgo_weights(const at::Tensor& hidden, const at::Tensor& weight, const Inputs& in) {
  torch::NoGradGuard no_grad;
  FusedLossOptions o;
  o.lambda = 0.5;
  sftgo::loss::LossInfo info;
  sftgo::loss::fused_group_loss(hidden, weight, in.labels, in.groups, o, &info);
  return info.weights;
}

// One forward of a variant on leaves that require grad. known: the sftgo coefficients (kFusedSftGoKnown).
at::Tensor forward(Variant v, const at::Tensor& hidden, const at::Tensor& weight, const Inputs& in,
                   const sftgo::loss::LossWeights& known = {}) {
  FusedLossOptions o;
  o.lambda = 0.5;
  o.onepass_tokens = g_onepass_tokens;
  sftgo::loss::LossInfo info;
  at::Tensor loss;
  switch (v) {
    case Variant::kFusedSftGo:
      loss = sftgo::loss::fused_group_loss(hidden, weight, in.labels, in.groups, o, &info);
      break;
    case Variant::kFusedSftGoKnown:
    case Variant::kFusedSftGoAuto:
      o.known_weights = known;
      o.pass = v == Variant::kFusedSftGoAuto ? sftgo::loss::LossPass::kAuto : sftgo::loss::LossPass::kOnePass;
      loss = sftgo::loss::fused_group_loss(hidden, weight, in.labels, in.groups, o, &info);
      break;
    case Variant::kFusedCe:
    case Variant::kFusedCeTwoPass:
    case Variant::kFusedCeAuto:
      o.objective = Objective::kCe;
      o.pass = v == Variant::kFusedCe          ? sftgo::loss::LossPass::kOnePass
               : v == Variant::kFusedCeTwoPass ? sftgo::loss::LossPass::kTwoPass
                                               : sftgo::loss::LossPass::kAuto;
      loss = sftgo::loss::fused_group_loss(hidden, weight, in.labels, at::Tensor(), o, &info);
      break;
    case Variant::kReference: return sftgo::loss::reference_group_loss(hidden, weight, in.labels, in.groups, o);
    case Variant::kUnfusedCe:
      // What a plain PyTorch trainer does: logits in the model dtype, then CE (fp32 inside).
      return at::cross_entropy_loss(at::matmul(hidden, weight.t()), in.labels, {}, at::Reduction::Mean, -100);
  }
  g_onepass_rows_used = info.onepass_tokens;
  return loss;
}

void sync(const Config& cfg) {
  if (cfg.device == "cuda") torch::cuda::synchronize();
}

// ---- memory probes ----
int64_t proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) return std::stoll(line.substr(n + 1));
  }
  return -1;
}

void reset_peak(const Config& cfg) {
#ifdef SFTGO_BENCH_CUDA
  if (cfg.device == "cuda") {
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    return;
  }
#endif
  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
}

int64_t current_bytes(const Config& cfg) {
#ifdef SFTGO_BENCH_CUDA
  if (cfg.device == "cuda") {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
    return stats.allocated_bytes[0].current;  // index 0 = aggregate pool
  }
#endif
  return proc_status_kb("VmRSS:") * 1024;
}

int64_t peak_bytes(const Config& cfg) {
#ifdef SFTGO_BENCH_CUDA
  if (cfg.device == "cuda") return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
#endif
  return proc_status_kb("VmHWM:") * 1024;
}

struct Measurement {
  double fwd_ms = 0, bwd_ms = 0, peak_extra = 0, loss = 0;
  int64_t onepass_rows = -1;  // tokens per one-pass block; 0 = two passes ran; -1 = not a fused variant
};

Measurement measure(Variant v, const Size& s, const Config& cfg) {
  const Inputs in = make_inputs(s, cfg, 1234);
  at::Tensor hidden = in.hidden.clone().requires_grad_(true);
  at::Tensor weight = in.weight.clone().requires_grad_(true);
  const bool needs_known = v == Variant::kFusedSftGoKnown || v == Variant::kFusedSftGoAuto;
  const sftgo::loss::LossWeights known = needs_known ? sftgo_weights(hidden, weight, in) : sftgo::loss::LossWeights{};
  const bool fused = v != Variant::kReference && v != Variant::kUnfusedCe;
  Measurement m;
  for (int it = 0; it < cfg.iters; ++it) {
    hidden.mutable_grad().reset();
    weight.mutable_grad().reset();
    sync(cfg);
    reset_peak(cfg);
    const int64_t base = current_bytes(cfg);
    sftgo::Timer timer;
    at::Tensor loss = forward(v, hidden, weight, in, known);
    sync(cfg);
    const double fwd_ms = timer.millis();
    if (fused) m.onepass_rows = g_onepass_rows_used;
    timer.reset();
    loss.backward();
    sync(cfg);
    const double bwd_ms = timer.millis();
    m.loss = loss.item<double>();
    loss = at::Tensor();
    // Peak of the timed iterations (the warm-up also pays one-time allocator and BLAS set-up).
    if (it > 0 || cfg.iters == 1) m.peak_extra = std::max(m.peak_extra, static_cast<double>(peak_bytes(cfg) - base));
    // The fastest timed iteration: on a shared machine the others' load only ever adds time.
    if (it > 0 || cfg.iters == 1) {
      if (m.fwd_ms + m.bwd_ms == 0 || fwd_ms + bwd_ms < m.fwd_ms + m.bwd_ms) {
        m.fwd_ms = fwd_ms;
        m.bwd_ms = bwd_ms;
      }
    }
  }
  return m;
}

// Runs fn in a forked child (CPU) and returns what it wrote; in-process on CUDA.
template <typename T>
bool run_isolated(const Config& cfg, const std::function<T()>& fn, T* out) {
  if (cfg.device == "cuda") {
    *out = fn();
    return true;
  }
  int fds[2];
  if (pipe(fds) != 0) return false;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    mallopt(M_MMAP_THRESHOLD, 1 << 20);  // freed tensors return to the OS: RSS tracks live memory
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
    at::set_num_threads(cfg.threads);
    int rc = 0;
    try {
      const T r = fn();
      if (write(fds[1], &r, sizeof(T)) != static_cast<ssize_t>(sizeof(T))) rc = 3;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child failed: %s\n", e.what());
      rc = 2;
    }
    close(fds[1]);
    std::fflush(stdout);
    _exit(rc);
  }
  close(fds[1]);
  T r{};
  const bool got = read(fds[0], &r, sizeof(T)) == static_cast<ssize_t>(sizeof(T));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  *out = r;
  return got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

struct Validation {
  double rel_dh = 0, rel_dw = 0, rel_loss = 0, rel_ce = 0;
  double rel_known = 0;  // one-pass sftgo (known weights) vs reference: max over loss, dh, dW
  double rel_ce2 = 0;    // two-pass ce vs at::cross_entropy: loss and dW
};

double rel_error(const at::Tensor& a, const at::Tensor& b) {
  const double denom = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / std::max(denom, 1e-30);
}

// Fused vs reference gradients, and fused ce vs at::cross_entropy, on the first min(T, 128) tokens.
Validation validate(const Size& s, const Config& cfg) {
  const Size small{std::min<int64_t>(s.t, 128), s.h, s.v};
  const Inputs in = make_inputs(small, cfg, 99);
  const sftgo::loss::LossWeights known = sftgo_weights(in.hidden, in.weight, in);
  auto grads = [&](Variant v) {
    at::Tensor hidden = in.hidden.clone().requires_grad_(true);
    at::Tensor weight = in.weight.clone().requires_grad_(true);
    at::Tensor loss = forward(v, hidden, weight, in, known);
    loss.backward();
    return std::make_tuple(loss.item<double>(), hidden.grad(), weight.grad());
  };
  // Only the two references' [V, H] gradients are kept; each fused one is compared and dropped (six
  // at once took 20 GiB at H = 3072 and were OOM-killed on the 24 GiB machine).
  const auto [l_r, dh_r, dw_r] = grads(Variant::kReference);
  const auto [l_u, dh_u, dw_u] = grads(Variant::kUnfusedCe);
  Validation val;
  {
    const auto [l_f, dh_f, dw_f] = grads(Variant::kFusedSftGo);
    val.rel_dh = rel_error(dh_f, dh_r);
    val.rel_dw = rel_error(dw_f, dw_r);
    val.rel_loss = std::abs(l_f - l_r) / std::abs(l_r);
  }
  {
    const auto [l_c, dh_c, dw_c] = grads(Variant::kFusedCe);
    val.rel_ce = std::max(std::abs(l_c - l_u) / std::abs(l_u), rel_error(dw_c, dw_u));
  }
  {
    const auto [l_k, dh_k, dw_k] = grads(Variant::kFusedSftGoKnown);
    val.rel_known = std::max({std::abs(l_k - l_r) / std::abs(l_r), rel_error(dh_k, dh_r), rel_error(dw_k, dw_r)});
  }
  {
    const auto [l_2, dh_2, dw_2] = grads(Variant::kFusedCeTwoPass);
    val.rel_ce2 = std::max(std::abs(l_2 - l_u) / std::abs(l_u), rel_error(dw_2, dw_u));
  }
  return val;
}

std::vector<Size> parse_sizes(const std::string& text) {
  std::vector<Size> sizes;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ';')) {
    Size s{};
    if (std::sscanf(item.c_str(), "%ld,%ld,%ld", &s.t, &s.h, &s.v) == 3) sizes.push_back(s);
  }
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  std::string sizes;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], val = argv[i + 1];
    if (k == "--device")
      cfg.device = val;
    else if (k == "--sizes")
      sizes = val;
    else if (k == "--iters")
      cfg.iters = std::max(1, std::stoi(val));
    else if (k == "--threads")
      cfg.threads = std::stoi(val);
    else if (k == "--dtype")
      cfg.dtype = val == "bf16" ? at::kBFloat16 : at::kFloat;
    else if (k == "--onepass-tokens")
      cfg.onepass_tokens = std::stoll(val);
    else if (k == "--variants")
      cfg.variants = val;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (cfg.device == "cuda") {
#ifndef SFTGO_BENCH_CUDA
    std::fprintf(stderr, "this build has no CUDA support\n");
    return 2;
#else
    if (!torch::cuda::is_available()) {
      std::fprintf(stderr, "no CUDA device\n");
      return 2;
    }
#endif
  }
  if (sizes.empty()) {
    sizes = cfg.device == "cuda" ? "4096,4096,128256;8192,4096,128256;16384,4096,128256;8192,3072,128256"
                                 : "256,1024,128256;512,2048,128256;1024,2048,128256";
  }
  cfg.sizes = parse_sizes(sizes);
  g_onepass_tokens = cfg.onepass_tokens;
  if (cfg.device == "cuda") at::set_num_threads(cfg.threads);
  const double elt = cfg.dtype == at::kFloat ? 4.0 : 2.0;
  std::printf("bench_loss: device=%s dtype=%s threads=%d iters=%d onepass_tokens=%lld (fastest of iterations 2..N)\n",
              cfg.device.c_str(), cfg.dtype == at::kFloat ? "fp32" : "bf16", cfg.threads, cfg.iters,
              static_cast<long long>(cfg.onepass_tokens));
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3) std::printf("load average at start: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
  int failures = 0;
  for (const Size& s : cfg.sizes) {
    Validation val;
    const bool ok = run_isolated<Validation>(
        cfg, [&] { return validate(s, cfg); }, &val);
    const double logits_mib = static_cast<double>(s.t) * s.v * 4.0 / (1 << 20);
    // Gradient outputs every variant allocates: d hidden [T, H] and d weight [V, H].
    const double grads_mib = (static_cast<double>(s.t) + s.v) * s.h * elt / (1 << 20);
    std::printf("\nT=%ld H=%ld V=%ld   fp32 logits = %.0f MiB, gradient outputs = %.0f MiB\n", s.t, s.h, s.v,
                logits_mib, grads_mib);
    std::printf(
        "  validation (T=%ld): fused 2p vs reference rel(dh)=%.1e rel(dW)=%.1e rel(loss)=%.1e; "
        "fused 1p* vs reference %.1e; fused ce 1p / 2p vs at::cross_entropy %.1e / %.1e\n",
        std::min<int64_t>(s.t, 128), val.rel_dh, val.rel_dw, val.rel_loss, val.rel_known, val.rel_ce, val.rel_ce2);
    const double tol = cfg.dtype == at::kFloat ? 1e-4 : 5e-2;
    if (!ok || !(val.rel_dh <= tol && val.rel_dw <= tol && val.rel_loss <= tol && val.rel_ce <= tol &&
                 val.rel_known <= tol && val.rel_ce2 <= tol)) {
      std::printf("  VALIDATION FAILED%s: skipping timing for this size\n",
                  ok ? "" : " (the validation child did not finish: killed, e.g. out of memory?)");
      ++failures;
      continue;
    }
    std::printf("  %-17s %10s %10s %10s %9s %12s %12s %10s %8s %6s\n", "variant", "fwd ms", "bwd ms", "total ms",
                "vs unfused", "peak MiB", "extra MiB", "extra/lgt", "1p rows", "load1");
    double unfused_ms = 0;
    for (Variant v : kVariants) {
      if (!selected(v, cfg.variants)) continue;
      Measurement m;
      if (!run_isolated<Measurement>(
              cfg, [&] { return measure(v, s, cfg); }, &m)) {
        std::printf("  %-17s failed\n", variant_name(v));
        ++failures;
        continue;
      }
      const double total = m.fwd_ms + m.bwd_ms;
      if (v == Variant::kUnfusedCe) unfused_ms = total;
      const double peak_mib = m.peak_extra / (1 << 20);
      const double extra_mib = peak_mib - grads_mib;  // beyond the gradients all variants must return
      char rows[32] = "-";
      if (m.onepass_rows == 0) std::snprintf(rows, sizeof(rows), "2p");
      if (m.onepass_rows > 0) std::snprintf(rows, sizeof(rows), "%lld", static_cast<long long>(m.onepass_rows));
      if (getloadavg(load, 1) != 1) load[0] = -1;  // the load while the variant ran (1-minute average)
      std::printf("  %-17s %10.1f %10.1f %10.1f %8.2fx %12.0f %12.0f %9.1f%% %8s %6.2f\n", variant_name(v), m.fwd_ms,
                  m.bwd_ms, total, unfused_ms > 0 ? total / unfused_ms : 0.0, peak_mib, extra_mib,
                  100.0 * extra_mib / logits_mib, rows, load[0]);
      std::fflush(stdout);
    }
  }
  return failures == 0 ? 0 : 1;
}
