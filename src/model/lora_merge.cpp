// lora-merge: adapter folded into the base model, written as a plain HF checkpoint directory.
#include "sftgo/model/lora_merge.h"

#include <signal.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/inference.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"

namespace sftgo::model {
namespace {

namespace fs = std::filesystem;

// What transformers' AutoTokenizer and our --model commands read from a model directory.
constexpr std::array<const char*, 4> kTokenizerFiles = {"tokenizer.json", "tokenizer_config.json",
                                                        "special_tokens_map.json", "chat_template.jinja"};

std::string read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  SFTGO_CHECK(in.good(), ErrorKind::kIo, "cannot read ", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The tokenizer files for the merged directory (name -> content), from the first of: the adapter
// directory, the base model directory, the training checkpoint holding the adapter (ADAPTER/..), that
// has a tokenizer.json; plus the base model's generation_config.json (its end-of-turn ids). `source`
// is the directory the tokenizer came from ("" when none has one).
std::map<std::string, std::string> merged_extra_files(const std::string& model_dir, const std::string& adapter_dir,
                                                      std::string* source) {
  std::map<std::string, std::string> files;
  std::error_code ec;
  const fs::path parent = fs::path(adapter_dir).lexically_normal().parent_path();
  std::vector<fs::path> candidates = {adapter_dir, model_dir};
  if (!parent.empty() && fs::is_regular_file(parent / "trainer_state.json", ec)) candidates.push_back(parent);
  source->clear();
  for (const fs::path& dir : candidates) {
    if (!fs::is_regular_file(dir / "tokenizer.json", ec)) continue;
    for (const char* name : kTokenizerFiles)
      if (fs::is_regular_file(dir / name, ec)) files[name] = read_whole_file(dir / name);
    *source = dir.string();
    break;
  }
  const fs::path generation = fs::path(model_dir) / "generation_config.json";
  if (fs::is_regular_file(generation, ec)) files["generation_config.json"] = read_whole_file(generation);
  return files;
}

// `inner` is `outer` or lies inside it (both absolute and normalised).
bool within(const fs::path& inner, const fs::path& outer) {
  auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return o == outer.end();
}

fs::path resolved(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);  // links resolved as far as the path exists
  if (ec) r = fs::absolute(p);
  r = r.lexically_normal();
  if (r.filename().empty()) r = r.parent_path();  // "out/" -> "out"
  return r;
}

// --out is replaced as a whole (a new directory renamed over it): refuse any --out whose
// replacement would delete the merge's own inputs, the current directory or a file that is not a
// merged checkpoint (exit 2, before anything is loaded).
void check_merge_output(const std::string& out_dir, const std::string& model_dir, const std::string& adapter_dir) {
  SFTGO_CHECK(!out_dir.empty(), ErrorKind::kUsage, "lora-merge --out is empty: name a new directory");
  const fs::path out = resolved(out_dir);
  for (const auto& [flag, dir] : {std::pair<const char*, const std::string&>{"--model", model_dir},
                                  std::pair<const char*, const std::string&>{"--adapter", adapter_dir}}) {
    const fs::path in = resolved(dir);
    SFTGO_CHECK_HINT(!within(in, out) && !within(out, in), ErrorKind::kUsage,
                     "write the merged checkpoint to a new directory beside the inputs", "lora-merge --out ", out_dir,
                     (out == in ? " is " : within(in, out) ? " contains " : " lies inside "), flag, " ", dir,
                     ": replacing it would delete the merge's own input");
  }
  std::error_code ec;
  const fs::path cwd = resolved(fs::current_path(ec).string());
  SFTGO_CHECK_HINT(ec || !within(cwd, out), ErrorKind::kUsage, "name a new directory, e.g. --out merged",
                   "lora-merge --out ", out_dir, " is (or holds) the current directory, which --out would replace");
  const fs::file_status st = fs::status(out, ec);
  SFTGO_CHECK_HINT(!fs::exists(st) || fs::is_directory(st), ErrorKind::kUsage,
                   "name a new directory (or an earlier merge's, which is replaced as a whole)", "lora-merge --out ",
                   out_dir, ": exists and is not a directory; lora-merge writes a checkpoint directory");
  // An existing directory is replaced whole: only an earlier checkpoint (config.json) or an empty one.
  SFTGO_CHECK_HINT(!fs::is_directory(st) || fs::is_empty(out, ec) || fs::exists(out / "config.json", ec),
                   ErrorKind::kUsage, "name a new directory or an earlier merge's output", "lora-merge --out ",
                   out_dir, ": is a directory that holds no checkpoint (no config.json); --out would replace it "
                   "and everything in it");
}

// A merge killed (or out of disk) part-way leaves OUT.tmp-PID (the directory being written) or,
// between its two renames, OUT.old-PID (the previous OUT). Remove those whose process is gone; an
// .old- one only while OUT exists (otherwise it is the only copy of the previous merge).
void remove_stale_merge_dirs(const fs::path& out) {
  std::error_code ec;
  const std::string base = out.filename().string();
  for (const auto& e : fs::directory_iterator(out.parent_path(), ec)) {
    const std::string name = e.path().filename().string();
    for (const char* tag : {".tmp-", ".old-"}) {
      const std::string prefix = base + tag;
      if (!name.starts_with(prefix) || name.size() == prefix.size()) continue;
      const std::string pid = name.substr(prefix.size());
      if (pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
      if (::kill(static_cast<pid_t>(std::stol(pid)), 0) == 0 || errno != ESRCH) continue;  // still running
      if (std::string(tag) == ".old-" && !fs::exists(out, ec)) continue;
      std::error_code rm;
      fs::remove_all(e.path(), rm);
      if (!rm) log_info("removed {} left by an interrupted merge (process {} is gone)", e.path().string(), pid);
    }
  }
}

}  // namespace

LoraMergeResult merge_lora_to_checkpoint(const LoraMergeOptions& o) {
  check_merge_output(o.out_dir, o.model_dir, o.adapter_dir);
  remove_stale_merge_dirs(resolved(o.out_dir));
  // Merged in fp32 (W + s B A rounded once), written in o.dtype.
  LlamaModel m =
      load_for_inference({.model_dir = o.model_dir, .adapter_dir = o.adapter_dir, .dtype = "float32", .device = "cpu"});
  LoraMergeResult result;
  result.adapter = lora_options(*m);
  merge_lora(*m);
  SaveOptions so;
  so.dtype = parse_dtype(o.dtype, "--dtype", ErrorKind::kUsage);
  // The tokenizer goes with the weights (same atomic swap): score/eval/generate --model OUT and
  // transformers' AutoTokenizer need it.
  so.extra_files = merged_extra_files(o.model_dir, o.adapter_dir, &result.tokenizer_source);
  save_pretrained(*m, resolved(o.out_dir).string(), so);  // temp dir beside OUT, then renamed
  return result;
}

}  // namespace sftgo::model
