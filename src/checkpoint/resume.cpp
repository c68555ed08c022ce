// Resuming: is a checkpoint complete (checkpoint_problem), which one to resume from
// (resolve_resume_dir), and reading back its trainer state, optimizer state and fp32 master weights.
#include "sftgo/checkpoint/checkpoint.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "checkpoint_internal.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {

using detail::step_of;

namespace {

std::string file_problem(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return path.filename().string() + " is missing";
  if (fs::file_size(path, ec) == 0) return path.filename().string() + " is empty";
  return "";
}

// A torch::serialize archive is a zip file: a complete one ends with the end-of-central-directory
// record ("PK\5\6" within the last 64 KiB + 22 bytes). A save cut short by a full disk or a crash lacks it.
std::string zip_problem(const fs::path& path) {
  std::string p = file_problem(path);
  if (!p.empty()) return p;
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  const uint64_t tail = std::min<uint64_t>(size, 65536 + 22);
  std::string buf(tail, '\0');
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return path.filename().string() + " cannot be read (" + std::strerror(errno) + ")";
  const bool ok =
      std::fseek(f, static_cast<long>(size - tail), SEEK_SET) == 0 && std::fread(buf.data(), 1, tail, f) == tail;
  std::fclose(f);
  if (!ok) return path.filename().string() + " cannot be read";
  if (buf.rfind(std::string("PK\x05\x06", 4)) == std::string::npos)
    return path.filename().string() + " is truncated (no zip end record)";
  return "";
}

// zero_manifest.json (written with the shards since it exists; older checkpoints have none): every
// shard it lists is there with the recorded size. The digests are checked by each rank as it reads
// its shards (dist::ZeroAdamW::load_shards), not here: that would read every shard on every rank.
std::string zero_manifest_problem(const fs::path& dir, const std::vector<fs::path>& shards) {
  const fs::path manifest = dir / "zero_manifest.json";
  std::error_code ec;
  if (!fs::exists(manifest, ec)) return "";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(manifest.string()));
  } catch (const std::exception& e) {
    return "zero_manifest.json is not valid JSON";
  }
  if (!j.is_object() || !j.contains("shards") || !j["shards"].is_array() || j["shards"].size() != shards.size())
    return "zero_manifest.json does not list the " + std::to_string(shards.size()) + " ZeRO-1 shards";
  for (const auto& e : j["shards"]) {
    if (!e.is_object() || !e.contains("file") || !e["file"].is_string() || !e.contains("bytes") ||
        !e["bytes"].is_number_unsigned())
      return "zero_manifest.json has a malformed shard entry";
    const fs::path f = dir / e["file"].get<std::string>();
    if (f.parent_path() != dir || !fs::is_regular_file(f, ec))
      return e["file"].get<std::string>() + " (listed in zero_manifest.json) is missing";
    const uint64_t size = fs::file_size(f, ec);
    if (size != e["bytes"].get<uint64_t>())
      return f.filename().string() + " has " + std::to_string(size) + " bytes, zero_manifest.json records " +
             std::to_string(e["bytes"].get<uint64_t>()) + " (truncated or replaced after the save)";
  }
  return "";
}

}  // namespace

std::string checkpoint_problem(const std::string& dir) {
  const fs::path d(dir);
  bool weights_only = false;
  try {
    weights_only = load_trainer_state(dir).weights_only;
  } catch (const Error& e) {
    return e.message();
  }
  try {
    // Parses every header and checks each file is as long as its header says (no tensor data read).
    io::SafetensorsCheckpoint::open(dir);
  } catch (const Error& e) {
    return "weights: " + e.message();
  }
  std::string p = file_problem(d / "config.json");
  if (!p.empty() || weights_only) return p;
  if (fs::exists(d / "master_weights.safetensors")) {
    try {
      io::SafetensorsFile::open((d / "master_weights.safetensors").string());
    } catch (const Error& e) {
      return e.message();
    }
  }
  std::vector<fs::path> shards;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(d, ec))
    if (starts_with(e.path().filename().string(), "zero_rank")) shards.push_back(e.path());
  if (shards.empty()) return zip_problem(d / "optimizer.pt");
  // zero_rankRRRRR_of_WWWWW.pt: all W shards, each a complete archive.
  const std::string first = shards.front().filename().string();
  const long world = std::strtol(first.c_str() + first.find("_of_") + 4, nullptr, 10);
  if (world <= 0 || static_cast<long>(shards.size()) != world)
    return "has " + std::to_string(shards.size()) + " ZeRO-1 optimizer shards, expected " + std::to_string(world);
  for (const auto& s : shards) {
    p = zip_problem(s);
    if (!p.empty()) return p;
  }
  return zero_manifest_problem(d, shards);
}

namespace {

// A weights-only checkpoint holds nothing to continue the optimizer from: say so, naming it.
void refuse_weights_only(const std::string& dir, const std::string& spec) {
  if (!load_trainer_state(dir).weights_only) return;
  SFTGO_FAIL_HINT(ErrorKind::kConfig,
                  "train from its weights in a new run (--set model.path=" + dir +
                      " --set run.output_dir=NEW_DIR; the optimizer and schedule start over), or keep "
                      "train.intermediate_checkpoints: full to resume from periodic checkpoints",
                  "--resume ", spec, ": ", dir,
                  " is a weights-only checkpoint (train.intermediate_checkpoints: weights): it has no optimizer "
                  "state (optimizer.pt or ZeRO-1 shards) and no fp32 master weights, so it cannot be resumed");
}

}  // namespace

namespace {

// Resuming from a checkpoint of run_dir that is not its newest would train over the later steps in
// the same directory: their checkpoints, `latest` and metrics.jsonl would hold two histories. So that
// directory always holds one, such a resume is refused; a branch goes into a new run.output_dir.
void refuse_rewriting_later_steps(const std::string& spec, const std::string& run_dir) {
  std::error_code ec;
  const fs::path own = fs::weakly_canonical(checkpoints_root(run_dir), ec);
  const fs::path from = fs::weakly_canonical(fs::path(spec), ec);
  if (from.parent_path() != own) return;  // a checkpoint of another run: this directory is a branch
  const int64_t step = step_of(from);
  std::string later;
  for (const std::string& dir : list_checkpoints(run_dir))
    if (step_of(dir) > step) later += (later.empty() ? "" : ", ") + fs::path(dir).filename().string();
  SFTGO_CHECK_HINT(later.empty(), ErrorKind::kConfig,
                   "continue the run from its newest checkpoint with --resume auto, or branch from this one into a "
                   "new directory: --resume " + spec + " --set run.output_dir=NEW_DIR",
                   "--resume ", spec, ": ", run_dir, " already holds later checkpoints (", later,
                   "); training from step ", step, " there would mix two runs' checkpoints and metrics.jsonl");
}

}  // namespace

std::optional<std::string> resolve_resume_dir(const std::string& spec, const std::string& run_dir) {
  if (spec == "auto") {
    auto all = list_checkpoints(run_dir);
    if (all.empty()) return std::nullopt;
    // Newest intact one: a damaged newest checkpoint (a disk error, a hand edit) falls back to the
    // one before it, which is what train.keep_last > 1 is for.
    std::string damaged;
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      const std::string problem = checkpoint_problem(*it);
      if (problem.empty()) {
        refuse_weights_only(*it, spec);
        if (!damaged.empty()) log_warn("--resume auto: resuming from {}, the newest intact checkpoint", *it);
        return *it;
      }
      log_warn("--resume auto: skipping damaged checkpoint {}: {}", *it, problem);
      damaged += "\n  " + *it + ": " + problem;
    }
    SFTGO_FAIL_HINT(ErrorKind::kFormat,
                    "resume from a copy of a good checkpoint with --resume DIR, or start over with --overwrite",
                    "--resume auto: every checkpoint in ", checkpoints_root(run_dir), " is damaged:", damaged);
  }
  SFTGO_CHECK_HINT(fs::exists(fs::path(spec) / "trainer_state.json"), ErrorKind::kIo,
                   "pass a directory written by sftgo-train (RUN_DIR/checkpoints/step_N) or --resume auto", "--resume ",
                   spec, ": no trainer_state.json there");
  const std::string problem = checkpoint_problem(spec);
  SFTGO_CHECK_HINT(problem.empty(), ErrorKind::kFormat,
                   "pass another checkpoint, or --resume auto to pick the newest intact one", "--resume ", spec,
                   ": damaged checkpoint: ", problem);
  refuse_weights_only(spec, spec);
  refuse_rewriting_later_steps(spec, run_dir);
  return spec;
}

TrainerState load_trainer_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  return TrainerState::from_json(read_file(path), path);
}

c10::Device optimizer_device(const torch::optim::Optimizer& optimizer) {
  for (const auto& group : optimizer.param_groups())
    for (const auto& p : group.params()) return p.is_meta() ? c10::Device(c10::kCPU) : p.device();
  return c10::kCPU;
}

void load_optimizer_state(const std::string& dir, torch::optim::Optimizer& optimizer) {
  const std::string path = (fs::path(dir) / "optimizer.pt").string();
  SFTGO_CHECK(fs::exists(path), ErrorKind::kIo, path, ": missing optimizer state");
  try {
    torch::serialize::InputArchive archive;
    // Mapped to this rank's device: without a map location LibTorch restores every tensor onto the
    // device it was saved from (rank 0's cuda:0), so each rank would build the whole AdamW state on GPU 0.
    archive.load_from(path, optimizer_device(optimizer));
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kFormat, path, ": cannot restore the optimizer state (", e.what_without_backtrace(), ")");
  }
}


namespace {

// One tensor of master_weights.safetensors into its fp32 target: from the mapped file, converted and
// moved to the target's device by copy_ in one pass.
void copy_master(const io::SafetensorsFile& file, const std::string& name, at::Tensor& target) {
  const io::TensorView* v = file.find(name);
  SFTGO_CHECK(v != nullptr, ErrorKind::kFormat, file.path(), ": missing tensor ", name,
              " (the fp32 master weights do not match this model)");
  SFTGO_CHECK(v->dtype == io::DType::kF32, ErrorKind::kFormat, file.path(), ": tensor ", name, " is ",
              io::dtype_name(v->dtype), ", expected F32");
  SFTGO_CHECK(v->shape == target.sizes().vec(), ErrorKind::kFormat, file.path(), ": tensor ", name,
              " has the wrong shape for this model (", at::IntArrayRef(v->shape), " saved, ", target.sizes(),
              " here)");
  target.copy_(torch::from_blob(const_cast<std::byte*>(v->data), v->shape, at::kFloat));
  file.release_pages(*v);  // this tensor's pages leave our RSS before the next one is read
}

}  // namespace

bool load_master_weights_into(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& targets) {
  const std::string path = (fs::path(dir) / "master_weights.safetensors").string();
  if (!fs::exists(path)) return false;
  auto file = io::SafetensorsFile::open(path);
  torch::NoGradGuard no_grad;
  for (auto [name, target] : targets) copy_master(*file, name, target);
  file->release_pages();
  return true;
}

}  // namespace sftgo::checkpoint
