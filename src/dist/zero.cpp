#include "sftgo/dist/zero.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/format.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/torch_grad.h"

namespace sftgo::dist {

std::string zero_shard_file_name(int rank, int world_size) {
  return format("zero_rank{:05d}_of_{:05d}.pt", rank, world_size);
}

ZeroShardDigest zero_shard_digest(const std::string& path) {
  ZeroShardDigest d;
  d.file = std::filesystem::path(path).filename().string();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  SFTGO_CHECK(f != nullptr, ErrorKind::kIo, path, ": cannot read the ZeRO-1 shard (", std::strerror(errno), ")");
  std::vector<char> block(size_t{1} << 20);
  uint64_t h = kHash64Seed;
  size_t n = 0;
  while ((n = std::fread(block.data(), 1, block.size(), f)) > 0) {
    h = hash64(block.data(), n, h);
    d.bytes += n;
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  SFTGO_CHECK(!failed, ErrorKind::kIo, path, ": read error while checking the ZeRO-1 shard");
  d.hash = format("{:016x}", h);
  return d;
}

std::string zero_manifest_json(int world_size, const std::vector<ZeroShardDigest>& shards) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : shards) list.push_back({{"file", s.file}, {"bytes", s.bytes}, {"hash64", s.hash}});
  nlohmann::json j = {{"format", "sftgo-zero-manifest"},
                      {"version", 1},
                      {"digest", "hash64 chained over 1 MiB blocks"},
                      {"world_size", world_size},
                      {"shards", list}};
  return j.dump(1) + "\n";
}

std::vector<ZeroShardDigest> parse_zero_manifest(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, source, ": not valid JSON (", e.what(), ")");
  }
  SFTGO_CHECK(j.is_object() && j.value("format", "") == "sftgo-zero-manifest" && j.value("version", 0) == 1 &&
                  j.contains("world_size") && j["world_size"].is_number_integer() && j.contains("shards") &&
                  j["shards"].is_array(),
              ErrorKind::kFormat, source,
              ": not a version 1 sftgo ZeRO-1 manifest (format, version, world_size, shards expected)");
  const int64_t world = j["world_size"].get<int64_t>();
  SFTGO_CHECK(world >= 1 && static_cast<int64_t>(j["shards"].size()) == world, ErrorKind::kFormat, source,
              ": world_size ", world, " but ", j["shards"].size(), " shard entries");
  std::vector<ZeroShardDigest> out;
  for (int64_t r = 0; r < world; ++r) {
    const auto& e = j["shards"][static_cast<size_t>(r)];
    const std::string want = zero_shard_file_name(static_cast<int>(r), static_cast<int>(world));
    SFTGO_CHECK(e.is_object() && e.value("file", "") == want && e.contains("bytes") &&
                    e["bytes"].is_number_unsigned() && e.contains("hash64") && e["hash64"].is_string(),
                ErrorKind::kFormat, source, ": shard entry ", r, " is not {\"file\": \"", want,
                "\", \"bytes\": N, \"hash64\": HEX}");
    out.push_back({want, e["bytes"].get<uint64_t>(), e["hash64"].get<std::string>()});
  }
  return out;
}

namespace {

// After a backward has added a bf16 parameter's gradient into its .grad: add that into the
// parameter's fp32 slice of the flat buffer and free it, so micro-batches accumulate in fp32 and only
// one parameter's bf16 gradient exists at a time.
struct AddIntoFlat : torch::autograd::PostAccumulateGradHook {
  at::Tensor slice;  // the parameter's view of the fp32 flat gradient buffer, shaped like it
  explicit AddIntoFlat(at::Tensor s) : slice(std::move(s)) {}
  void operator()(const torch::autograd::Variable& param) override {
    torch::NoGradGuard no_grad;
    add_in_slices(slice, param.grad());  // fp32 += bf16 without an fp32 copy of the whole gradient
    const_cast<torch::autograd::Variable&>(param).mutable_grad().reset();
  }
};

}  // namespace

ZeroOptimizer::ZeroOptimizer(std::shared_ptr<Comm> comm, const optim::NamedParameters& params,
                             const optim::RuleOptions& options, bool fp32_grads, bool sharded_grads,
                             int64_t gather_elements, bool host_state, const InitialValues& initial)
    : comm_(std::move(comm)), rule_(optim::make_update_rule(options)), sharded_(sharded_grads), host_(host_state) {
  SFTGO_CHECK(!host_ || sharded_, ErrorKind::kInternal, "ZeRO: host-memory optimizer state needs sharded gradients");
  optim::check_shardable(*rule_);  // a whole-matrix rule cannot update a flat shard
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    SFTGO_CHECK(p.device() == params.front().second.device() && p.scalar_type() == params.front().second.scalar_type(),
                ErrorKind::kInternal, "ZeRO-1: parameter ", name, " differs in dtype or device from the first one");
    params_.push_back(p);
    segments_.emplace_back(numel_, p.numel());
    decay_.push_back(optim::decays(name, p) ? options.weight_decay : 0.0);
    numel_ += p.numel();
  }
  SFTGO_CHECK(!params_.empty(), ErrorKind::kInternal, "ZeRO-1: no trainable parameters");
  const int64_t w = comm_->world_size();
  shard_ = (numel_ + w - 1) / w;
  padded_ = shard_ * w;
  begin_ = shard_ * comm_->rank();
  SFTGO_CHECK(sharded_ || !initial, ErrorKind::kInternal, "ZeRO: initial values need sharded gradients");
  if (sharded_) {
    init_sharded(gather_elements, initial);
    return;
  }
  const at::ScalarType working = params_.front().scalar_type();
  hooked_ = fp32_grads && c10::elementSize(working) < c10::elementSize(at::kFloat);
  flat_ = at::zeros({padded_}, params_.front().options().dtype(hooked_ ? at::kFloat : working).requires_grad(false));
  for (size_t i = 0; i < params_.size(); ++i)
    flat_.narrow(0, segments_[i].first, segments_[i].second).copy_(params_[i].reshape({-1}));
  master_ = flat_.narrow(0, begin_, shard_).to(at::kFloat).clone();
  for (size_t k = 0; k < rule_->state_names().size(); ++k) state_.push_back(at::zeros_like(master_));
  shard_buf_ = at::empty({shard_}, flat_.options());
  if (hooked_) {
    for (size_t i = 0; i < params_.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<AddIntoFlat>(grad_view(i)));
  }
  zero_grad();
}

namespace {
// Calls fn(param, offset in the param, offset in [lo, hi), count) for every parameter part inside the
// flat range [lo, hi).
template <typename Fn>
void for_each_part(const std::vector<std::pair<int64_t, int64_t>>& segments, int64_t lo, int64_t hi, Fn&& fn) {
  for (size_t i = 0; i < segments.size(); ++i) {
    const int64_t a = std::max(lo, segments[i].first), b = std::min(hi, segments[i].first + segments[i].second);
    if (a < b) fn(i, a - segments[i].first, a - lo, b - a);
  }
}
}  // namespace

void ZeroOptimizer::init_sharded(int64_t gather_elements, const InitialValues& initial) {
  // The master shard straight from the parameters it covers: no full-size buffer at any time.
  const auto where = host_ ? at::TensorOptions().device(at::kCPU) : params_.front().options();
  master_ = at::zeros({shard_}, where.dtype(at::kFloat).requires_grad(false));
  for (const auto& p : params_)
    SFTGO_CHECK(p.is_contiguous(), ErrorKind::kInternal, "ZeRO-2: a parameter is not contiguous");
  // ZeRO-3 with initial values: every parameter is asked for, in order (a random initialisation draws
  // them in sequence); only this rank's part of each is kept.
  for (size_t i = 0; initial && i < params_.size(); ++i) {
    const at::Tensor v = initial(i);
    SFTGO_CHECK(v.sizes() == params_[i].sizes(), ErrorKind::kInternal, "ZeRO-3: initial values of parameter ", i,
                " have shape ", v.sizes(), ", expected ", params_[i].sizes());
    for_each_part(segments_, begin_, begin_ + shard_, [&](size_t j, int64_t po, int64_t fo, int64_t n) {
      if (j == i) master_.narrow(0, fo, n).copy_(v.reshape({-1}).narrow(0, po, n));
    });
  }
  if (!initial)
    for_each_part(segments_, begin_, begin_ + shard_, [&](size_t i, int64_t po, int64_t fo, int64_t n) {
      master_.narrow(0, fo, n).copy_(params_[i].view({-1}).narrow(0, po, n));
    });
  for (size_t k = 0; k < rule_->state_names().size(); ++k) state_.push_back(at::zeros_like(master_));
  shard_buf_ = at::zeros_like(master_);
  gather_ = std::max<int64_t>(1, std::min(shard_, gather_elements / comm_->world_size()));
  zero_grad();
}

ZeroOptimizer::~ZeroOptimizer() {
  if (hooked_)
    for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

at::Tensor ZeroOptimizer::grad_view(size_t i) const {
  return flat_.narrow(0, segments_[i].first, segments_[i].second).view(params_[i].sizes());
}

void ZeroOptimizer::zero_grad() {
  // Gradients live in flat_ (backward accumulates into these views in place), so reduce-scatter
  // reads them without a second full-size gradient buffer.
  torch::NoGradGuard no_grad;
  if (sharded_) {  // the gradients are summed into shard_buf_ by the ZeRO-2 reducer
    shard_buf_.zero_();
    for (auto& p : params_) p.mutable_grad().reset();
    return;
  }
  flat_.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].grad();
    if (hooked_)
      params_[i].mutable_grad().reset();  // normally freed by the hook already
    else if (!g.defined() || !g.is_alias_of(flat_))
      params_[i].mutable_grad() = grad_view(i);
  }
}

double ZeroOptimizer::step(double lr, double max_norm, bool finite) {
  if (!finite) return NAN;  // the same on every rank: no rank enters the collectives below
  torch::NoGradGuard no_grad;
  // 1. Reduce-scatter the flat gradients (a gradient that is not a view of flat_, e.g. one replaced
  // by other code, is copied in first; with hooks, one that no hook saw is added): this rank gets the
  // summed shard. ZeRO-2: the reducer has done this bucket by bucket during backward.
  for (size_t i = 0; i < params_.size() && !sharded_; ++i) {
    const at::Tensor& g = params_[i].grad();
    if (!g.defined() || g.is_alias_of(flat_)) continue;
    if (hooked_) {
      grad_view(i).add_(g);
      params_[i].mutable_grad().reset();
    } else {
      grad_view(i).copy_(g);
    }
  }
  if (!sharded_) comm_->reduce_scatter(shard_buf_, flat_);

  // 2. Global norm from every shard's squared norm, accumulated in float64 like optim::clip_grad_norm.
  // Large shards are processed in slices so temporaries stay a few MB (8B parameters: 1B per rank).
  constexpr int64_t kSlice = optim::kRuleSliceElements;  // 16 MB of fp32, as the plain updaters slice
  // The sum stays on the device (one host sync per step, not one per slice: ~240 on an 8B shard), added
  // in the same order as before, so the norm is the same double.
  at::Tensor local_sq = at::zeros({}, shard_buf_.options().dtype(at::kDouble));
  for (int64_t o = 0; o < shard_; o += kSlice) {
    const int64_t n = std::min(kSlice, shard_ - o);
    local_sq += shard_buf_.narrow(0, o, n).to(at::kDouble).pow(2).sum();
  }
  const double norm = std::sqrt(comm_->sum({local_sq.item<double>()})[0]);
  if (!std::isfinite(norm)) return norm;
  const double clip = max_norm > 0.0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;

  // 3. The update rule on the shard: decay on each parameter's part of it, then the element-wise rule
  // in slices (the same rule object and operations the plain updater applies to whole parameters).
  ++steps_;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (decay_[i] == 0.0) continue;
    const int64_t lo = std::max(segments_[i].first, begin_);
    const int64_t hi = std::min(segments_[i].first + segments_[i].second, begin_ + shard_);
    if (lo < hi) rule_->decay(master_.narrow(0, lo - begin_, hi - lo), lr, decay_[i]);
  }
  std::vector<at::Tensor> state(state_.size());
  for (int64_t o = 0; o < shard_; o += kSlice) {
    const int64_t n = std::min(kSlice, shard_ - o);
    at::Tensor g = shard_buf_.narrow(0, o, n).to(at::kFloat);
    if (clip != 1.0) g.mul_(clip);
    for (size_t k = 0; k < state_.size(); ++k) state[k] = state_[k].narrow(0, o, n);
    rule_->apply(master_.narrow(0, o, n), g, state, lr, steps_);
  }
  if (padded_ > numel_ && begin_ + shard_ > numel_) {
    const int64_t lo = std::max<int64_t>(0, numel_ - begin_);
    master_.narrow(0, lo, shard_ - lo).zero_();  // padding stays zero
  }

  // 4. All-gather the updated shards (through the shard buffer) into flat_, then the parameters.
  gather_params();
  return norm;
}

void ZeroOptimizer::save_shard(const std::string& path) const {
  torch::serialize::OutputArchive a;
  a.write("master", master_.cpu());
  const auto names = rule_->state_names();  // AdamW: exp_avg, exp_avg_sq
  for (size_t k = 0; k < names.size(); ++k) a.write(names[k], state_[k].cpu());
  // begin, size, numel (unpadded), steps
  a.write("range", torch::tensor({begin_, shard_, numel_, steps_}, torch::kInt64));
  // The saving rank and world size, checked against the file's name on resume.
  a.write("rank_world", torch::tensor({static_cast<int64_t>(comm_->rank()), static_cast<int64_t>(comm_->world_size())},
                                      torch::kInt64));
  a.write(optim::kUpdateRuleKey, c10::IValue(rule_->name()));
  // Through a CheckedFile: LibTorch's own file writer aborts the process (std::terminate from its
  // destructor) when the disk fills mid-archive; this sink never throws and finish() reports the
  // first write error naming the file (and removes it).
  CheckedFile out(path);
  try {
    a.save_to([&out](const void* data, size_t n) { return out.write(data, n); });
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kIo, path, ": cannot write the ZeRO-1 shard (", e.what_without_backtrace(), ")");
  }
  out.finish();
}

namespace {

// zero_rankRRRRR_of_WWWWW.pt -> {R, W}; {-1, -1} for any other name.
std::pair<int64_t, int64_t> shard_rank_and_world(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  long long r = -1, w = -1;
  int used = 0;
  if (std::sscanf(name.c_str(), "zero_rank%lld_of_%lld.pt%n", &r, &w, &used) != 2 ||
      used != static_cast<int>(name.size()) || name != zero_shard_file_name(static_cast<int>(r), static_cast<int>(w)) ||
      w < 1 || r >= w)
    return {-1, -1};
  return {r, w};
}

// The manifest's entries by file name, from the directory of `paths` (empty when it has none: a
// checkpoint saved before manifests were written).
std::map<std::string, ZeroShardDigest> manifest_of(const std::vector<std::string>& paths) {
  std::map<std::string, ZeroShardDigest> out;
  const auto manifest = std::filesystem::path(paths.front()).parent_path() / kZeroManifestName;
  std::error_code ec;
  if (!std::filesystem::exists(manifest, ec)) return out;
  for (auto& d : parse_zero_manifest(read_file(manifest.string()), manifest.string())) out[d.file] = d;
  return out;
}

// A shard file as the save wrote it: its size and digest are the manifest's.
void check_against_manifest(const std::string& path, const std::map<std::string, ZeroShardDigest>& manifest) {
  if (manifest.empty()) return;
  const std::string name = std::filesystem::path(path).filename().string();
  const auto it = manifest.find(name);
  SFTGO_CHECK_HINT(it != manifest.end(), ErrorKind::kFormat, "resume with the world size the shards were saved with",
                   path, ": not listed in ", kZeroManifestName, " (saved with another world size?)");
  const ZeroShardDigest d = zero_shard_digest(path);
  SFTGO_CHECK_HINT(d.bytes == it->second.bytes, ErrorKind::kFormat, "resume from another checkpoint", path, ": ",
                   d.bytes, " bytes, but ", kZeroManifestName, " records ", it->second.bytes,
                   " (truncated or replaced after the save)");
  SFTGO_CHECK_HINT(d.hash == it->second.hash, ErrorKind::kFormat, "resume from another checkpoint", path,
                   ": content digest ", d.hash, " differs from ", it->second.hash, " in ", kZeroManifestName,
                   " (the file was changed or replaced by another shard after the save)");
}

// One shard file's tensors, checked against its name and the running rule.
struct ShardFile {
  at::Tensor master, range;      // [size] fp32; [4] begin, size, numel, steps
  std::vector<at::Tensor> state;  // [size] fp32 each, the rule's state_names() order
};

ShardFile read_shard_file(const std::string& path, const optim::UpdateRule& rule) {
  torch::serialize::InputArchive a;
  ShardFile f;
  at::Tensor rank_world;
  c10::IValue saved_rule;
  bool named = false;
  try {
    a.load_from(path, c10::Device(c10::kCPU));  // saved from the CPU; only this rank's slice moves on
    a.read("master", f.master);
    const bool has_rule = a.try_read(optim::kUpdateRuleKey, saved_rule);  // absent: written before rules, AdamW
    const std::string by = has_rule && saved_rule.isString() ? saved_rule.toStringRef() : "adamw";
    SFTGO_CHECK_HINT(by == rule.name(), ErrorKind::kConfig, "resume with the optim.name the run was saved with", path,
                     ": saved by update rule '", by, "', but optim.name is '", rule.name(), "'");
    for (const auto& name : rule.state_names()) {
      at::Tensor t;
      SFTGO_CHECK(a.try_read(name, t), ErrorKind::kFormat, path, ": no '", name, "' tensor, which update rule '",
                  rule.name(), "' keeps");
      f.state.push_back(t);
    }
    a.read("range", f.range);
    named = a.try_read("rank_world", rank_world);  // absent in shards saved before it was written
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kFormat, path, ": not a ZeRO-1 shard (", e.what_without_backtrace(), ")");
  }
  if (named) {
    const auto [nr, nw] = shard_rank_and_world(path);
    const bool two = rank_world.numel() == 2;
    const int64_t wr = two ? rank_world[0].item<int64_t>() : -1, ww = two ? rank_world[1].item<int64_t>() : -1;
    SFTGO_CHECK(wr == nr && ww == nw, ErrorKind::kFormat, path, ": written by rank ", wr, " of ", ww,
                ", not by the rank ", nr, " of ", nw, " its name gives");
  }
  bool consistent = f.range.numel() == 4 && f.master.numel() == f.range[1].item<int64_t>();
  for (const auto& t : f.state) consistent = consistent && t.numel() == f.master.numel();
  SFTGO_CHECK(consistent, ErrorKind::kFormat, path, ": inconsistent ZeRO-1 shard tensors");
  return f;
}

}  // namespace

std::vector<std::string> zero_shards_overlapping(const std::vector<std::string>& paths, int64_t numel, int64_t begin,
                                                 int64_t size) {
  std::vector<std::string> out;
  const int64_t end = std::min(begin + size, numel);
  for (const auto& path : paths) {
    const auto [r, w] = shard_rank_and_world(path);
    SFTGO_CHECK(w > 0, ErrorKind::kFormat, path, ": not a ZeRO-1 shard file name (expected ",
                zero_shard_file_name(0, 1), " with the saving rank and world size)");
    // The same split as the constructor's: rank r of w owns [r * ceil(numel / w), (r + 1) * ceil(numel / w)).
    const int64_t shard = (numel + w - 1) / w;
    if (std::max(r * shard, begin) < std::min((r + 1) * shard, end)) out.push_back(path);
  }
  return out;
}

void ZeroOptimizer::load_shards(const std::vector<std::string>& paths) {
  torch::NoGradGuard no_grad;
  SFTGO_CHECK(!paths.empty(), ErrorKind::kFormat, "ZeRO-1 resume: the checkpoint has no zero_rank*.pt shard files");
  int64_t filled = 0, steps = -1;
  const int64_t end = std::min(begin_ + shard_, numel_);
  // Only the files whose slice overlaps this rank's (by their names): one file per rank when the world
  // size is unchanged, not the whole optimizer state on every rank.
  std::vector<std::string> needed = zero_shards_overlapping(paths, numel_, begin_, shard_);
  if (needed.empty()) needed.push_back(paths.front());  // a padding-only rank: the step count
  const auto manifest = manifest_of(paths);
  for (const auto& path : needed) {
    check_against_manifest(path, manifest);
    const ShardFile f = read_shard_file(path, *rule_);
    const at::Tensor& range = f.range;
    const int64_t fb = range[0].item<int64_t>(), fs = range[1].item<int64_t>(), fn = range[2].item<int64_t>();
    SFTGO_CHECK(fn == numel_, ErrorKind::kFormat, path, ": shard of a model with ", fn, " parameters, this one has ",
                numel_);
    const auto [fr, fw] = shard_rank_and_world(path);
    SFTGO_CHECK(fb == fr * ((numel_ + fw - 1) / fw) && fs == (numel_ + fw - 1) / fw, ErrorKind::kFormat, path,
                ": holds values [", fb, ", ", fb + fs, ") of the flat vector, not the slice its name gives");
    const int64_t fsteps = range[3].item<int64_t>();
    SFTGO_CHECK(steps < 0 || steps == fsteps, ErrorKind::kFormat, path, ": step count ", fsteps,
                " differs from other shards (", steps, ")");
    steps = fsteps;
    const int64_t lo = std::max(fb, begin_), hi = std::min({fb + fs, end});
    if (lo >= hi) continue;
    const auto dev = master_.device();
    master_.narrow(0, lo - begin_, hi - lo).copy_(f.master.narrow(0, lo - fb, hi - lo).to(dev));
    for (size_t k = 0; k < state_.size(); ++k)
      state_[k].narrow(0, lo - begin_, hi - lo).copy_(f.state[k].narrow(0, lo - fb, hi - lo).to(dev));
    filled += hi - lo;
  }
  SFTGO_CHECK(filled == std::max<int64_t>(0, end - begin_), ErrorKind::kFormat, "ZeRO-1 resume: the shard files cover ",
              filled, " of this rank's ", std::max<int64_t>(0, end - begin_),
              " values (missing or overlapping shard files)");
  steps_ = steps;
  // The working parameters follow the restored fp32 masters (exact for bf16 runs too).
  gather_params();
  zero_grad();
}

void ZeroOptimizer::gather_params_in_pieces() {
  // Piece j of every rank's shard in one all-gather: rank r's values [j, j + n) of its shard are the
  // flat values [r * shard + j, ...), copied into the parameters they belong to. The buffer holds
  // world * gather_ values of the working dtype, not the whole model.
  const int w = comm_->world_size();
  const at::ScalarType working = params_.front().scalar_type();
  const at::TensorOptions on_device = params_.front().options().dtype(working).requires_grad(false);
  at::Tensor recv = at::empty({w * gather_}, on_device);  // [world * piece]
  for (int64_t j = 0; j < shard_; j += gather_) {
    const int64_t n = std::min(gather_, shard_ - j);
    at::Tensor send = master_.narrow(0, j, n).to(on_device);  // [n] (from host memory with offload)
    at::Tensor out = recv.narrow(0, 0, w * n);               // [world * n]
    comm_->all_gather(out, send);
    for (int r = 0; r < w; ++r) {
      const int64_t lo = r * shard_ + j;
      for_each_part(segments_, lo, lo + n, [&](size_t i, int64_t po, int64_t fo, int64_t k) {
        params_[i].view({-1}).narrow(0, po, k).copy_(out.narrow(0, r * n + fo, k));
      });
    }
  }
}

void ZeroOptimizer::gather_on_demand() {
  SFTGO_CHECK(sharded_, ErrorKind::kInternal, "ZeRO-3 needs the ZeRO-2 gradient shard (sharded_grads)");
  on_demand_ = true;
}

void ZeroOptimizer::gather_params() {
  torch::NoGradGuard no_grad;
  if (on_demand_) return;  // ZeRO-3: each layer is gathered from the master shards when it runs
  if (sharded_) {
    gather_params_in_pieces();
    return;
  }
  // With fp32 gradients for bf16 parameters, the gather runs in bf16 inside the front half of the fp32
  // buffers' storage (their gradients are spent by now): no extra memory, half the traffic of fp32.
  const at::ScalarType working = params_.front().scalar_type();
  at::Tensor send = hooked_ ? shard_buf_.view(working).narrow(0, 0, shard_) : shard_buf_;  // [shard]
  at::Tensor recv = hooked_ ? flat_.view(working).narrow(0, 0, padded_) : flat_;           // [padded]
  send.copy_(master_);
  comm_->all_gather(recv, send);
  for (size_t i = 0; i < params_.size(); ++i)
    params_[i].copy_(recv.narrow(0, segments_[i].first, segments_[i].second).view(params_[i].sizes()));
  // flat_ held parameters now; it becomes the gradient buffer again at zero_grad().
}

}  // namespace sftgo::dist
