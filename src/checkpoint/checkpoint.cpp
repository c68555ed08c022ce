#include "sftgo/checkpoint/checkpoint.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdio>
#include <csignal>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fcntl.h>
#include <unistd.h>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {

std::string TrainerState::to_json() const {
  nlohmann::json j = {{"format", "sftgo-trainer-state"}, {"version", 1}, {"step", step},
                      {"total_steps", total_steps}, {"sampler", {{"epoch", sampler_epoch}, {"index", sampler_index}}},
                      {"nan_skips", nan_skips}, {"tokens_seen", tokens_seen}, {"lambda", lambda},
                      {"elapsed_s", elapsed_s}, {"rng_state", rng_state_hex}, {"config_yaml", config_yaml},
                      {"world_size", world_size}};
  return j.dump(1) + "\n";
}

TrainerState TrainerState::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, source, ": not valid JSON (", e.what(), ")");
  }
  SFTGO_CHECK(j.is_object() && j.value("format", "") == "sftgo-trainer-state", ErrorKind::kFormat, source,
              ": not an sftgo trainer state (expected \"format\": \"sftgo-trainer-state\")");
  TrainerState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.total_steps = j.at("total_steps").get<int64_t>();
    s.sampler_epoch = j.at("sampler").at("epoch").get<int64_t>();
    s.sampler_index = j.at("sampler").at("index").get<int64_t>();
    s.nan_skips = j.at("nan_skips").get<int64_t>();
    s.tokens_seen = j.at("tokens_seen").get<int64_t>();
    s.lambda = j.at("lambda").get<double>();
    s.elapsed_s = j.at("elapsed_s").get<double>();
    s.rng_state_hex = j.at("rng_state").get<std::string>();
    s.config_yaml = j.at("config_yaml").get<std::string>();
    s.world_size = j.at("world_size").get<int>();
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, source, ": missing or mistyped field (", e.what(), ")");
  }
  return s;
}

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string checkpoints_root(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

namespace {

void fsync_path(const fs::path& p, bool directory) {
  int fd = ::open(p.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const SaveRequest& req, int64_t keep_last) {
  SFTGO_CHECK(req.model != nullptr && (req.optimizer != nullptr || !req.move_files.empty()), ErrorKind::kInternal,
              "save_checkpoint: no model/optimizer");
  const fs::path root = checkpoints_root(run_dir);
  fs::create_directories(root);
  const fs::path final_dir = root / checkpoint_dir_name(req.state.step);
  const fs::path tmp = root / (checkpoint_dir_name(req.state.step) + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);

  // Weights first (save_pretrained is itself atomic into `tmp`), then the rest into the same dir.
  model::save_pretrained(*req.model, tmp.string());
  for (const auto& f : req.tokenizer_files) {
    if (!fs::exists(f)) continue;
    fs::copy_file(f, tmp / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
    SFTGO_CHECK(!ec, ErrorKind::kIo, "copying ", f, " into ", tmp.string(), ": ", ec.message());
  }
  if (req.optimizer != nullptr) {
    torch::serialize::OutputArchive archive;
    req.optimizer->save(archive);
    archive.save_to((tmp / "optimizer.pt").string());
  }
  for (const auto& f : req.move_files) {
    fs::rename(f, tmp / fs::path(f).filename(), ec);
    SFTGO_CHECK(!ec, ErrorKind::kIo, "moving ", f, " into ", tmp.string(), ": ", ec.message());
  }
  if (!req.master_weights.empty()) {
    std::vector<at::Tensor> keep;  // contiguous CPU copies alive until written
    std::vector<io::TensorSource> sources;
    for (const auto& [name, t] : req.master_weights) {
      keep.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
      sources.push_back(io::TensorSource::borrow(name, io::DType::kF32, keep.back().sizes().vec(), keep.back().data_ptr()));
    }
    io::write_safetensors((tmp / "master_weights.safetensors").string(), sources);
  }
  write_file_atomic((tmp / "resolved_config.yaml").string(), req.resolved_config_yaml);
  // trainer_state.json last: its presence marks a complete checkpoint.
  write_file_atomic((tmp / "trainer_state.json").string(), req.state.to_json());
  for (const auto& e : fs::directory_iterator(tmp)) fsync_path(e.path(), false);
  fsync_path(tmp, true);

  if (fs::exists(final_dir)) {
    // Re-saving the same step (e.g. a signal right after a periodic save): replace it.
    fs::path old = final_dir;
    old += ".old-" + std::to_string(::getpid());
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir);
  }
  // RUN_DIR/checkpoints/latest -> step_N: a relative symlink replaced atomically (rename), so other
  // runs can name a run's newest weights (the paper configs' Rho-1 reference model does).
  const fs::path link_tmp = root / ("latest.tmp-" + std::to_string(::getpid()));
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(final_dir.filename(), link_tmp, ec);
  if (!ec) fs::rename(link_tmp, root / "latest", ec);
  if (ec) log_warn("could not point {} at {}: {}", (root / "latest").string(), final_dir.string(), ec.message());
  fsync_path(root, true);

  // Leftovers of a process killed mid-save (step_N.tmp-PID, step_N.old-PID, latest.tmp-PID) would keep
  // a whole checkpoint's worth of disk forever: remove those whose process is gone.
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    size_t at = name.find(".tmp-");
    if (at == std::string::npos) at = name.find(".old-");
    if (at == std::string::npos) continue;
    const long pid = std::strtol(name.c_str() + at + 5, nullptr, 10);
    if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still running (or not ours to tell)
    std::error_code rm_ec;
    fs::remove_all(e.path(), rm_ec);
    if (!rm_ec) log_info("removed {} left by an interrupted save", e.path().string());
  }

  auto all = list_checkpoints(run_dir);
  for (size_t i = 0; keep_last > 0 && i + static_cast<size_t>(keep_last) < all.size(); ++i) {
    fs::remove_all(all[i], ec);
    if (ec) log_warn("could not remove old checkpoint {}: {}", all[i], ec.message());
  }
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  const fs::path root = checkpoints_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    // Only finished checkpoints: step_NNNNNNNN exactly, with its trainer state.
    if (e.is_directory() && name.size() == 13 && starts_with(name, "step_") &&
        name.find_first_not_of("0123456789", 5) == std::string::npos && fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> resolve_resume_dir(const std::string& spec, const std::string& run_dir) {
  if (spec == "auto") {
    auto all = list_checkpoints(run_dir);
    if (all.empty()) return std::nullopt;
    return all.back();
  }
  SFTGO_CHECK_HINT(fs::exists(fs::path(spec) / "trainer_state.json"), ErrorKind::kIo,
                   "pass a directory written by sftgo-train (RUN_DIR/checkpoints/step_N) or --resume auto",
                   "--resume ", spec, ": no trainer_state.json there");
  return spec;
}

TrainerState load_trainer_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  return TrainerState::from_json(read_file(path), path);
}

void load_optimizer_state(const std::string& dir, torch::optim::Optimizer& optimizer) {
  const std::string path = (fs::path(dir) / "optimizer.pt").string();
  SFTGO_CHECK(fs::exists(path), ErrorKind::kIo, path, ": missing optimizer state");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kFormat, path, ": cannot restore the optimizer state (", e.what_without_backtrace(), ")");
  }
}

std::map<std::string, at::Tensor> load_master_weights(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  const std::string path = (fs::path(dir) / "master_weights.safetensors").string();
  if (!fs::exists(path)) return out;
  auto file = io::SafetensorsFile::open(path);
  for (const auto& v : file->tensors()) {
    SFTGO_CHECK(v.dtype == io::DType::kF32, ErrorKind::kFormat, path, ": tensor ", v.name, " is ",
                io::dtype_name(v.dtype), ", expected F32");
    out[v.name] = torch::from_blob(const_cast<std::byte*>(v.data), v.shape, at::kFloat).clone();
  }
  return out;
}

std::string cpu_rng_state_hex() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  at::Tensor state = gen.get_state();
  const auto* p = state.data_ptr<uint8_t>();
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(state.numel() * 2);
  for (int64_t i = 0; i < state.numel(); ++i) {
    out += kHex[p[i] >> 4];
    out += kHex[p[i] & 15];
  }
  return out;
}

void set_cpu_rng_state_hex(const std::string& hex) {
  SFTGO_CHECK(hex.size() % 2 == 0, ErrorKind::kFormat, "RNG state: odd hex length");
  at::Tensor state = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  auto* p = state.data_ptr<uint8_t>();
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    SFTGO_FAIL(ErrorKind::kFormat, "RNG state: bad hex digit");
  };
  for (size_t i = 0; i < hex.size() / 2; ++i) p[i] = static_cast<uint8_t>(nib(hex[2 * i]) * 16 + nib(hex[2 * i + 1]));
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace sftgo::checkpoint
