// Saving: the atomic checkpoint directory, the `latest` link, keep-last pruning and the listing of
// complete checkpoints (see checkpoint.h for the layout).
#include "sftgo/checkpoint/checkpoint.h"

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fcntl.h>
#include <unistd.h>

#include "checkpoint_internal.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string checkpoints_root(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

// step_NNNNNNNN -> N; -1 for any other name.
int64_t detail::step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.size() != 13 || !starts_with(name, "step_") || name.find_first_not_of("0123456789", 5) != std::string::npos)
    return -1;
  return std::stoll(name.substr(5));
}

using detail::step_of;

namespace {

void fsync_path(const fs::path& p, bool directory) {
  int fd = ::open(p.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Leftovers of a process killed mid-save (step_N.tmp-PID, step_N.old-PID, latest.tmp-PID) would keep
// a whole checkpoint's worth of disk forever: remove those whose process is gone. Done before a save
// too, so the space they hold is free for it.
void remove_dead_leftovers(const fs::path& root) {
  std::error_code ec;
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
}

// optimizer.pt through a CheckedFile: LibTorch's own file writer aborts the process (std::terminate
// from its destructor) when the disk fills mid-archive; this sink never throws, so the archive
// completes into the void and finish() reports the first write error naming the file.
void write_optimizer(const fs::path& path, torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  CheckedFile out(path.string());
  try {
    archive.save_to([&out](const void* data, size_t n) { return out.write(data, n); });
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kIo, path.string(), ": cannot serialize the optimizer state (", e.what_without_backtrace(),
               ")");
  }
  out.finish();
}

void write_checkpoint_files(const fs::path& tmp, const SaveRequest& req) {
  // Weights first (save_pretrained is itself atomic into `tmp`), then the rest into the same dir.
  model::SaveOptions so;
  so.before_read = req.before_weight;
  model::save_pretrained(*req.model, tmp.string(), so);
  std::error_code ec;
  for (const auto& f : req.tokenizer_files) {
    if (!fs::exists(f)) continue;
    fs::copy_file(f, tmp / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
    SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, write_error_hint(ec.value(), tmp.string()), "copying ", f, " into ",
                     tmp.string(), ": ", ec.message());
  }
  if (req.optimizer != nullptr) write_optimizer(tmp / "optimizer.pt", *req.optimizer);
  for (const auto& f : req.move_files) {
    fs::rename(f, tmp / fs::path(f).filename(), ec);
    SFTGO_CHECK(!ec, ErrorKind::kIo, "moving ", f, " into ", tmp.string(), ": ", ec.message());
  }
  if (!req.master_weights.empty()) {
    std::vector<at::Tensor> keep;  // contiguous CPU copies alive until written
    std::vector<io::TensorSource> sources;
    for (const auto& [name, t] : req.master_weights) {
      keep.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
      sources.push_back(
          io::TensorSource::borrow(name, io::DType::kF32, keep.back().sizes().vec(), keep.back().data_ptr()));
    }
    io::write_safetensors((tmp / "master_weights.safetensors").string(), sources);
  }
  write_file_atomic((tmp / "resolved_config.yaml").string(), req.resolved_config_yaml);
  // trainer_state.json last: its presence marks a complete checkpoint.
  write_file_atomic((tmp / "trainer_state.json").string(), req.state.to_json());
  for (const auto& e : fs::directory_iterator(tmp)) fsync_path(e.path(), false);
  fsync_path(tmp, true);
}

// The first line of a message (LibTorch's carry a backtrace after it).
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const SaveRequest& req, int64_t keep_last) {
  SFTGO_CHECK(req.model != nullptr && (req.optimizer != nullptr || !req.move_files.empty() || req.state.weights_only),
              ErrorKind::kInternal,
              "save_checkpoint: no model/optimizer");
  const fs::path root = checkpoints_root(run_dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, write_error_hint(ec.value(), root.string()), root.string(),
                   ": cannot create the checkpoint directory: ", ec.message());
  remove_dead_leftovers(root);
  const fs::path final_dir = root / checkpoint_dir_name(req.state.step);
  const fs::path tmp = root / (checkpoint_dir_name(req.state.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);

  // Any failure (a full disk above all) removes this save's partial output and names the file; the
  // checkpoints saved before are untouched (nothing is renamed or pruned until this one is complete).
  const std::string failed = "saving checkpoint " + final_dir.string() + " failed (earlier checkpoints are intact): ";
  auto cleanup = [&] {
    std::error_code rm_ec;
    fs::remove_all(tmp, rm_ec);
  };
  try {
    write_checkpoint_files(tmp, req);
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
  } catch (const Error& e) {
    cleanup();
    SFTGO_FAIL_HINT(e.kind(), e.hint(), failed, e.message());
  } catch (const c10::Error& e) {
    cleanup();
    SFTGO_FAIL(ErrorKind::kIo, failed, first_line(e.what_without_backtrace()));
  } catch (const fs::filesystem_error& e) {
    cleanup();
    SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(e.code().value(), tmp.string()), failed, e.what());
  } catch (const std::exception& e) {  // std::ios_failure and the like from a library's writer
    cleanup();
    SFTGO_FAIL(ErrorKind::kIo, failed, e.what());
  }
  // RUN_DIR/checkpoints/latest -> step_N: a relative symlink replaced atomically (rename), so other
  // runs can name a run's newest weights (the paper configs' Rho-1 reference model does).
  const fs::path link_tmp = root / ("latest.tmp-" + std::to_string(::getpid()));
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(final_dir.filename(), link_tmp, ec);
  if (!ec) fs::rename(link_tmp, root / "latest", ec);
  if (ec) log_warn("could not point {} at {}: {}", (root / "latest").string(), final_dir.string(), ec.message());
  fsync_path(root, true);
  remove_dead_leftovers(root);
  prune_checkpoints(run_dir, req.state.step, keep_last);
  return final_dir.string();
}

void prune_checkpoints(const std::string& run_dir, int64_t saved_step, int64_t keep_last) {
  if (keep_last <= 0) return;
  // Only this checkpoint and older ones count: a checkpoint with a higher step is not this run's
  // past (e.g. a run resumed from an earlier checkpoint by name) and is never deleted here, and the
  // one just written is always kept.
  // checkpoints/best (train.save_best) is kept in addition to keep_last: it neither counts nor goes.
  std::error_code link_ec;
  const fs::path best = fs::read_symlink(fs::path(checkpoints_root(run_dir)) / "best", link_ec);
  std::vector<std::string> older;
  for (const auto& dir : list_checkpoints(run_dir)) {
    const int64_t step = step_of(dir);
    if (step >= 0 && step < saved_step && (link_ec || fs::path(dir).filename() != best)) older.push_back(dir);
  }
  const size_t keep_older = static_cast<size_t>(keep_last - 1);
  for (size_t i = 0; i + keep_older < older.size(); ++i) {
    std::error_code ec;
    fs::remove_all(older[i], ec);
    if (ec) log_warn("could not remove old checkpoint {}: {}", older[i], ec.message());
  }
}

void point_best_at(const std::string& run_dir, const std::string& checkpoint_dir) {
  const fs::path root = checkpoints_root(run_dir);
  const fs::path tmp = root / ("best.tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_directory_symlink(fs::path(checkpoint_dir).filename(), tmp, ec);
  SFTGO_CHECK(!ec, ErrorKind::kIo, "could not create ", tmp.string(), ": ", ec.message());
  fs::rename(tmp, root / "best", ec);  // atomic: a reader sees the old target or the new one
  SFTGO_CHECK(!ec, ErrorKind::kIo, "could not point ", (root / "best").string(), " at ", checkpoint_dir, ": ",
              ec.message());
  fsync_path(root, true);
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  const fs::path root = checkpoints_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    // Only finished checkpoints: step_NNNNNNNN exactly, with its trainer state.
    if (e.is_directory(ec) && step_of(e.path()) >= 0 && fs::exists(e.path() / "trainer_state.json", ec))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace sftgo::checkpoint
