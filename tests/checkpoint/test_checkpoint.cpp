// Checkpoint module: what is read back is validated, pruning never deletes the checkpoint just
// written, a failed save leaves nothing partial, --resume auto skips a damaged newest checkpoint,
// the run-directory lock and fresh-run guard, and checked file writes (issue 17).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/checkpoint/run_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/strings.h"
#include "sftgo/model/llama.h"

namespace fs = std::filesystem;

namespace sftgo::checkpoint {
namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("sftgo_test_checkpoint_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The message of the sftgo::Error `f` throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TrainerState valid_state() {
  TrainerState s;
  s.step = 3;
  s.total_steps = 10;
  s.sampler_epoch = 0;
  s.sampler_index = 12;
  s.lambda = 0.9;
  s.elapsed_s = 1.5;
  s.rng_state_hex = cpu_rng_state_hex();
  s.config_yaml = "run: {}\n";
  return s;
}

std::string with(const std::string& key, const nlohmann::json& value) {
  auto j = nlohmann::json::parse(valid_state().to_json());
  if (key == "sampler.index")
    j["sampler"]["index"] = value;
  else
    j[key] = value;
  return j.dump();
}

TEST(TrainerState, RoundTripsAndValidatesWhatIsReadBack) {
  const TrainerState back = TrainerState::from_json(valid_state().to_json(), "ts.json");
  EXPECT_EQ(back.step, 3);
  EXPECT_EQ(back.sampler_index, 12);
  EXPECT_EQ(back.rng_state_hex, cpu_rng_state_hex());
  EXPECT_EQ(back.rng_state_hex.size(), expected_rng_state_hex_size());

  auto bad = [](const std::string& text) {
    return error_of([&] { TrainerState::from_json(text, "x/trainer_state.json"); });
  };
  // Each names the file and the field; "step": -5 used to resume with negative learning rates.
  EXPECT_NE(bad(with("step", -5)).find("x/trainer_state.json: field \"step\" is -5, expected >= 0"), std::string::npos);
  EXPECT_NE(bad(with("step", 11)).find("\"step\" is 11, past \"total_steps\" 10"), std::string::npos);
  EXPECT_NE(bad(with("step", 2.5)).find("\"step\" is 2.5, expected an integer"), std::string::npos);
  EXPECT_NE(bad(with("sampler.index", -1)).find("\"sampler.index\" is -1"), std::string::npos);
  EXPECT_NE(bad(with("world_size", 0)).find("\"world_size\" is 0"), std::string::npos);
  EXPECT_NE(bad(with("elapsed_s", nullptr)).find("\"elapsed_s\" is null, expected a finite number"), std::string::npos);
  const std::string rng = cpu_rng_state_hex();
  EXPECT_NE(bad(with("rng_state", rng.substr(0, 100))).find("\"rng_state\" has 100 hex digits, expected exactly"),
            std::string::npos);
  EXPECT_NE(bad(with("rng_state", "g" + rng.substr(1))).find("non-hex character at offset 0"), std::string::npos);
  EXPECT_NE(bad("{\"format\": \"sftgo-trainer-state\"}").find("missing field \"step\""), std::string::npos);
}

TEST(TrainerState, RngStateOfTheWrongLengthIsAnErrorNotABacktrace) {
  const std::string rng = cpu_rng_state_hex();
  EXPECT_NE(error_of([&] { set_cpu_rng_state_hex(rng.substr(0, 64)); }).find("expected exactly"), std::string::npos);
  EXPECT_NO_THROW(set_cpu_rng_state_hex(rng));
  EXPECT_EQ(cpu_rng_state_hex(), rng);
}

// A tiny model and an AdamW with state, as the trainer saves them.
struct Tiny {
  model::LlamaModel model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  Tiny() {
    model::LlamaConfig c = model::LlamaConfig::preset("tiny");
    c.vocab_size = 64;
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 8;
    model = model::LlamaModel(c);
    optimizer = std::make_unique<torch::optim::AdamW>(model->parameters(), torch::optim::AdamWOptions(1e-3));
    for (auto& p : model->parameters()) p.mutable_grad() = torch::ones_like(p);
    optimizer->step();
  }
  SaveRequest request(int64_t step) const {
    SaveRequest r;
    r.model = model.get();
    r.optimizer = optimizer.get();
    r.state = valid_state();
    r.state.step = step;
    r.state.total_steps = 100;
    r.resolved_config_yaml = "run: {}\n";
    return r;
  }
};

std::vector<std::string> names(const std::vector<std::string>& dirs) {
  std::vector<std::string> out;
  for (const auto& d : dirs) out.push_back(fs::path(d).filename().string());
  return out;
}

TEST(Checkpoint, PruningKeepsTheCheckpointJustSavedAndNeverLaterOnes) {
  Tiny t;
  const fs::path run = fresh_dir("prune");
  for (int64_t s : {1, 2, 3}) save_checkpoint(run.string(), t.request(s), 2);
  EXPECT_EQ(names(list_checkpoints(run.string())), (std::vector<std::string>{"step_00000002", "step_00000003"}));
  // Checkpoints of a longer run (steps 10, 12) and a save of step 4 with keep_last = 1: the old code
  // sorted all of them by step and deleted the one it had just written.
  for (int64_t s : {10, 12}) save_checkpoint(run.string(), t.request(s), 5);
  save_checkpoint(run.string(), t.request(4), 1);
  EXPECT_EQ(names(list_checkpoints(run.string())),
            (std::vector<std::string>{"step_00000004", "step_00000010", "step_00000012"}));
  EXPECT_EQ(fs::read_symlink(run / "checkpoints" / "latest").string(), "step_00000004");
}

TEST(Checkpoint, AFailedSaveRemovesItsPartialOutputAndKeepsThePreviousOne) {
  Tiny t;
  const fs::path run = fresh_dir("failed_save");
  save_checkpoint(run.string(), t.request(1), 2);
  SaveRequest r = t.request(2);
  r.tokenizer_files = {run.string()};  // a directory: copying it fails after the weights are written
  const std::string err = error_of([&] { save_checkpoint(run.string(), r, 2); });
  EXPECT_NE(err.find("saving checkpoint " + (run / "checkpoints" / "step_00000002").string() + " failed"),
            std::string::npos)
      << err;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(run / "checkpoints")) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step_00000001"}));
  EXPECT_EQ(checkpoint_problem((run / "checkpoints" / "step_00000001").string()), "");
}

TEST(Checkpoint, ResumeAutoSkipsDamagedCheckpointsNewestFirst) {
  Tiny t;
  const fs::path run = fresh_dir("damaged");
  for (int64_t s : {1, 2, 3}) save_checkpoint(run.string(), t.request(s), 5);
  const fs::path c1 = run / "checkpoints" / "step_00000001", c2 = run / "checkpoints" / "step_00000002",
                 c3 = run / "checkpoints" / "step_00000003";
  EXPECT_EQ(*resolve_resume_dir("auto", run.string()), c3.string());
  fs::resize_file(c3 / "optimizer.pt", fs::file_size(c3 / "optimizer.pt") / 2);
  EXPECT_EQ(checkpoint_problem(c3.string()), "optimizer.pt is truncated (no zip end record)");
  fs::resize_file(c2 / "model.safetensors", 100);
  EXPECT_NE(checkpoint_problem(c2.string()).find("weights: "), std::string::npos) << checkpoint_problem(c2.string());
  EXPECT_EQ(*resolve_resume_dir("auto", run.string()), c1.string());
  // Named explicitly, a damaged checkpoint is an error (no silent substitute).
  EXPECT_NE(error_of([&] {
              resolve_resume_dir(c3.string(), run.string());
            }).find("damaged checkpoint: optimizer.pt is truncated"),
            std::string::npos);
  fs::remove(c1 / "optimizer.pt");
  const std::string all = error_of([&] { resolve_resume_dir("auto", run.string()); });
  EXPECT_NE(all.find("every checkpoint"), std::string::npos) << all;
  EXPECT_NE(all.find("optimizer.pt is missing"), std::string::npos) << all;
}

TEST(Checkpoint, ZeroShardsMustAllBeThereAndComplete) {
  Tiny t;
  const fs::path run = fresh_dir("zero");
  SaveRequest r = t.request(1);
  r.optimizer = nullptr;  // ZeRO-1: each rank's optimizer shard travels in move_files
  for (int rank = 0; rank < 2; ++rank) {
    const fs::path shard = run / ("zero_rank0000" + std::to_string(rank) + "_of_00002.pt");
    torch::serialize::OutputArchive a;
    a.write("master", torch::ones({4}));
    a.save_to(shard.string());
    r.move_files.push_back(shard.string());
  }
  const fs::path dir = save_checkpoint(run.string(), r, 2);
  EXPECT_EQ(checkpoint_problem(dir.string()), "");
  fs::resize_file(dir / "zero_rank00001_of_00002.pt", 10);
  EXPECT_EQ(checkpoint_problem(dir.string()), "zero_rank00001_of_00002.pt is truncated (no zip end record)");
  fs::remove(dir / "zero_rank00001_of_00002.pt");
  EXPECT_EQ(checkpoint_problem(dir.string()), "has 1 ZeRO-1 optimizer shards, expected 2");
}

TEST(RunDir, LockIsExclusiveAndNamesTheHolder) {
  const fs::path run = fresh_dir("lock");
  {
    RunDirLock first(run.string());
    // flock locks belong to the open file description: a second open in this process conflicts as a
    // second process would.
    const std::string err = error_of([&] { RunDirLock second(run.string()); });
    EXPECT_NE(err.find("is in use by another sftgo-train run (pid " + std::to_string(::getpid()) + " on host "),
              std::string::npos)
        << err;
  }
  EXPECT_NO_THROW(RunDirLock again(run.string()));  // released with its holder
}

TEST(RunDir, FreshRunGuardRefusesAnotherRunUnlessOverwriting) {
  Tiny t;
  const fs::path run = fresh_dir("guard");
  EXPECT_EQ(describe_existing_run(run.string()), "");
  EXPECT_NO_THROW(prepare_fresh_run(run.string(), false));
  save_checkpoint(run.string(), t.request(5), 2);
  save_checkpoint(run.string(), t.request(10), 2);
  write_file_atomic((run / "metrics.jsonl").string(), "{\"step\": 1}\n{\"step\": 2}\n");
  EXPECT_EQ(describe_existing_run(run.string()),
            "checkpoints step_00000005..step_00000010 (2) and metrics.jsonl (2 lines)");
  const std::string err = error_of([&] { prepare_fresh_run(run.string(), false); });
  EXPECT_NE(err.find("already holds a run"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step_00000010"));
  prepare_fresh_run(run.string(), true);
  EXPECT_FALSE(fs::exists(run / "checkpoints"));
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));
  EXPECT_EQ(describe_existing_run(run.string()), "");
  for (const auto& e : fs::directory_iterator(run))
    EXPECT_FALSE(starts_with(e.path().filename().string(), ".overwritten-"));
}

TEST(CheckedFile, AFullDeviceIsAnErrorNamingTheFileAndNothingIsLeft) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  const fs::path dir = fresh_dir("full");
  // Through a symlink: the failed file is unlinked, which must remove the link, not the device.
  const fs::path link = dir / "optimizer.pt";
  fs::create_symlink("/dev/full", link);
  std::string err;
  {
    CheckedFile f(link.string());
    std::string big(1 << 16, 'x');
    EXPECT_EQ(f.write(big.data(), big.size()), big.size());  // never throws mid-stream
    EXPECT_TRUE(f.failed());
    err = error_of([&] { f.finish(); });
  }
  EXPECT_NE(err.find(link.string() + ": write failed: No space left on device"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(fs::symlink_status(link)));
  EXPECT_TRUE(fs::exists("/dev/full"));
  // A file never finished is removed too (an exception between its writes).
  {
    CheckedFile g((dir / "partial").string());
    g.write("abc", 3);
  }
  EXPECT_FALSE(fs::exists(dir / "partial"));
}

TEST(CheckedFile, UnwritableDirectoriesNameTheirSetting) {
  const fs::path dir = fresh_dir("unwritable");
  write_file_atomic((dir / "file").string(), "x");
  const std::string err =
      error_of([&] { ensure_writable_directory((dir / "file" / "sub").string(), "run.output_dir"); });
  EXPECT_NE(
      err.find("run.output_dir " + (dir / "file" / "sub").string() + ": cannot create the directory: Not a directory"),
      std::string::npos)
      << err;
  EXPECT_NE(error_of([&] {
              write_file_atomic((dir / "file" / "x.json").string(), "{}");
            }).find("cannot create the directory"),
            std::string::npos);
  EXPECT_NO_THROW(ensure_writable_directory((dir / "new" / "deeper").string(), "data.cache_dir"));
  EXPECT_TRUE(fs::is_empty(dir / "new" / "deeper"));  // the probe file is gone
}

}  // namespace
}  // namespace sftgo::checkpoint
