#include "sftgo/checkpoint/checkpoint.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <csignal>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <fcntl.h>
#include <unistd.h>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {

std::string TrainerState::to_json() const {
  nlohmann::json j = {{"format", "sftgo-trainer-state"},
                      {"version", 1},
                      {"step", step},
                      {"total_steps", total_steps},
                      {"sampler", {{"epoch", sampler_epoch}, {"index", sampler_index}}},
                      {"nan_skips", nan_skips},
                      {"tokens_seen", tokens_seen},
                      {"lambda", lambda},
                      {"elapsed_s", elapsed_s},
                      {"rng_state", rng_state_hex},
                      {"config_yaml", config_yaml},
                      {"world_size", world_size}};
  if (!cuda_rng_states_hex.empty()) j["cuda_rng_states"] = cuda_rng_states_hex;
  if (weights_only) j["weights_only"] = true;
  return j.dump(1) + "\n";
}

namespace {

// An integer field, checked: JSON allows 1.5 or -5 where a count is expected; a resumed run must not
// start from a negative step or a position outside the data (it would train with negative learning
// rates or read out of range).
int64_t count_field(const nlohmann::json& parent, const char* key, const std::string& where,
                    const std::string& source) {
  SFTGO_CHECK(parent.contains(key), ErrorKind::kFormat, source, ": missing field \"", where, "\"");
  const auto& v = parent.at(key);
  SFTGO_CHECK(v.is_number_integer(), ErrorKind::kFormat, source, ": field \"", where, "\" is ", v.dump(),
              ", expected an integer");
  const int64_t x = v.get<int64_t>();
  SFTGO_CHECK(x >= 0, ErrorKind::kFormat, source, ": field \"", where, "\" is ", x, ", expected >= 0");
  return x;
}

double finite_field(const nlohmann::json& j, const char* key, const std::string& source) {
  SFTGO_CHECK(j.contains(key), ErrorKind::kFormat, source, ": missing field \"", key, "\"");
  const auto& v = j.at(key);
  SFTGO_CHECK(v.is_number() && std::isfinite(v.get<double>()), ErrorKind::kFormat, source, ": field \"", key, "\" is ",
              v.dump(), ", expected a finite number");
  return v.get<double>();
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "" when `hex` is a CPU generator state this LibTorch can restore, else what is wrong with it.
std::string rng_state_problem(const std::string& hex) {
  const size_t want = expected_rng_state_hex_size();
  if (hex.size() != want)
    return "has " + std::to_string(hex.size()) + " hex digits, expected exactly " + std::to_string(want) +
           " (the CPU generator state of this LibTorch; truncated or from another version?)";
  for (size_t i = 0; i < hex.size(); ++i)
    if (hex_digit(hex[i]) < 0) return "has a non-hex character at offset " + std::to_string(i);
  return "";
}

// "" when `hex` is a non-empty string of whole bytes in hex digits (at most max_digits), else what is wrong.
std::string hex_bytes_problem(const std::string& hex, size_t max_digits = 4096) {
  if (hex.empty() || hex.size() % 2 != 0 || hex.size() > max_digits)
    return "has " + std::to_string(hex.size()) + " hex digits, expected an even number from 2 to " +
           std::to_string(max_digits);
  for (size_t i = 0; i < hex.size(); ++i)
    if (hex_digit(hex[i]) < 0) return "has a non-hex character at offset " + std::to_string(i);
  return "";
}

// "cuda_rng_states": one generator state per rank of the saving run.
std::vector<std::string> cuda_rng_states_field(const nlohmann::json& v, const TrainerState& s,
                                               const std::string& source) {
  SFTGO_CHECK(v.is_array() && v.size() == static_cast<size_t>(s.world_size), ErrorKind::kFormat, source,
              ": field \"cuda_rng_states\" is not an array of ", s.world_size, " strings (one per rank)");
  std::vector<std::string> out;
  for (size_t r = 0; r < v.size(); ++r) {
    SFTGO_CHECK(v[r].is_string(), ErrorKind::kFormat, source, ": field \"cuda_rng_states\"[", r, "] is ",
                v[r].dump(), ", expected a hex string");
    out.push_back(v[r].get<std::string>());
    const std::string p = hex_bytes_problem(out.back());
    SFTGO_CHECK(p.empty(), ErrorKind::kFormat, source, ": field \"cuda_rng_states\"[", r, "] ", p);
  }
  return out;
}

}  // namespace

size_t expected_rng_state_hex_size() {
  static const size_t n = cpu_rng_state_hex().size();
  return n;
}

TrainerState TrainerState::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  // A key given twice in one object: JSON leaves its meaning open (the parser keeps the last), and a
  // hand edit that adds a second "step" must not resume from whichever one wins.
  std::vector<std::set<std::string>> keys;  // per open object
  std::string duplicate;
  auto track = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) keys.emplace_back();
    if (ev == E::object_end && !keys.empty()) keys.pop_back();
    if (ev == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(text, track);
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, source, ": not valid JSON (", e.what(), ")");
  }
  SFTGO_CHECK(duplicate.empty(), ErrorKind::kFormat, source, ": field \"", duplicate,
              "\" appears twice in one object; each field must be given once");
  SFTGO_CHECK(j.is_object() && j.value("format", "") == "sftgo-trainer-state", ErrorKind::kFormat, source,
              ": not an sftgo trainer state (expected \"format\": \"sftgo-trainer-state\")");
  // Version 1 is the only layout there is; a newer one may mean fields this reader would misread.
  SFTGO_CHECK(!j.contains("version") || (j["version"].is_number_integer() && j["version"].get<int64_t>() == 1),
              ErrorKind::kFormat, source, ": field \"version\" is ", j.value("version", nlohmann::json()).dump(),
              ", expected 1 (the only trainer-state version this sftgo-train reads; written by a newer one?)");
  TrainerState s;
  s.step = count_field(j, "step", "step", source);
  s.total_steps = count_field(j, "total_steps", "total_steps", source);
  SFTGO_CHECK(s.step <= s.total_steps, ErrorKind::kFormat, source, ": field \"step\" is ", s.step,
              ", past \"total_steps\" ", s.total_steps);
  SFTGO_CHECK(j.contains("sampler") && j["sampler"].is_object(), ErrorKind::kFormat, source,
              ": missing field \"sampler\" (an object with \"epoch\" and \"index\")");
  s.sampler_epoch = count_field(j["sampler"], "epoch", "sampler.epoch", source);
  s.sampler_index = count_field(j["sampler"], "index", "sampler.index", source);
  s.nan_skips = count_field(j, "nan_skips", "nan_skips", source);
  s.tokens_seen = count_field(j, "tokens_seen", "tokens_seen", source);
  s.lambda = finite_field(j, "lambda", source);
  s.elapsed_s = finite_field(j, "elapsed_s", source);
  SFTGO_CHECK(s.elapsed_s >= 0, ErrorKind::kFormat, source, ": field \"elapsed_s\" is ", s.elapsed_s,
              ", expected >= 0");
  const int64_t world = count_field(j, "world_size", "world_size", source);
  SFTGO_CHECK(world >= 1 && world <= (int64_t{1} << 20), ErrorKind::kFormat, source, ": field \"world_size\" is ",
              world, ", expected 1 .. 1048576");
  s.world_size = static_cast<int>(world);
  SFTGO_CHECK(j.contains("rng_state") && j["rng_state"].is_string(), ErrorKind::kFormat, source,
              ": missing field \"rng_state\" (a hex string)");
  s.rng_state_hex = j["rng_state"].get<std::string>();
  const std::string rng = rng_state_problem(s.rng_state_hex);
  SFTGO_CHECK(rng.empty(), ErrorKind::kFormat, source, ": field \"rng_state\" ", rng);
  SFTGO_CHECK(j.contains("config_yaml") && j["config_yaml"].is_string(), ErrorKind::kFormat, source,
              ": missing field \"config_yaml\" (a string)");
  s.config_yaml = j["config_yaml"].get<std::string>();
  if (j.contains("cuda_rng_states")) s.cuda_rng_states_hex = cuda_rng_states_field(j["cuda_rng_states"], s, source);
  if (j.contains("weights_only")) {
    SFTGO_CHECK(j["weights_only"].is_boolean(), ErrorKind::kFormat, source, ": field \"weights_only\" is ",
                j["weights_only"].dump(), ", expected true or false");
    s.weights_only = j["weights_only"].get<bool>();
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

// step_NNNNNNNN -> N; -1 for any other name.
int64_t step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.size() != 13 || !starts_with(name, "step_") || name.find_first_not_of("0123456789", 5) != std::string::npos)
    return -1;
  return std::stoll(name.substr(5));
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
  model::save_pretrained(*req.model, tmp.string());
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
  std::vector<std::string> older;
  for (const auto& dir : list_checkpoints(run_dir)) {
    const int64_t step = step_of(dir);
    if (step >= 0 && step < saved_step) older.push_back(dir);
  }
  const size_t keep_older = static_cast<size_t>(keep_last - 1);
  for (size_t i = 0; i + keep_older < older.size(); ++i) {
    std::error_code ec;
    fs::remove_all(older[i], ec);
    if (ec) log_warn("could not remove old checkpoint {}: {}", older[i], ec.message());
  }
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

namespace {

std::string bytes_to_hex(const at::Tensor& state) {  // [n] uint8, CPU
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

at::Tensor hex_to_bytes(const std::string& hex) {  // -> [n] uint8; hex already checked
  at::Tensor state = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  auto* p = state.data_ptr<uint8_t>();
  for (size_t i = 0; i < hex.size() / 2; ++i)
    p[i] = static_cast<uint8_t>(hex_digit(hex[2 * i]) * 16 + hex_digit(hex[2 * i + 1]));
  return state;
}

}  // namespace

std::string cpu_rng_state_hex() { return rng_state_hex(c10::kCPU); }

void set_cpu_rng_state_hex(const std::string& hex) {
  const std::string problem = rng_state_problem(hex);
  SFTGO_CHECK(problem.empty(), ErrorKind::kFormat, "RNG state ", problem);
  set_rng_state_hex(c10::kCPU, hex);
}

std::string rng_state_hex(c10::Device device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return bytes_to_hex(gen.get_state());
}

void set_rng_state_hex(c10::Device device, const std::string& hex) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  const int64_t want = gen.get_state().numel();
  const std::string problem =
      static_cast<int64_t>(hex.size()) != 2 * want
          ? "has " + std::to_string(hex.size()) + " hex digits, expected exactly " + std::to_string(2 * want)
          : hex_bytes_problem(hex, hex.size());
  SFTGO_CHECK(problem.empty(), ErrorKind::kFormat, "RNG state of ", device.str(), " ", problem,
              " (the generator state of this LibTorch; truncated or from another version?)");
  try {
    gen.set_state(hex_to_bytes(hex));
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kFormat, "RNG state of ", device.str(), ": LibTorch rejects it (",
               e.what_without_backtrace(), ")");
  }
}

}  // namespace sftgo::checkpoint
