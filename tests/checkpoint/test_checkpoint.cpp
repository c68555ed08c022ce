// Checkpoint module: what is read back is validated, pruning never deletes the checkpoint just
// written, a failed save leaves nothing partial, --resume auto skips a damaged newest checkpoint,
// the run-directory lock and fresh-run guard, and checked file writes (issue 17).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <caffe2/serialize/inline_container.h>
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

// Issue 25 item 10: a second "step" (the parser would keep the last) and an unknown version were
// accepted; both name the file and the field now. weights_only must be a boolean.
TEST(TrainerState, DuplicateKeysAndUnknownVersionsAreRefused) {
  auto bad = [](const std::string& text) {
    return error_of([&] { TrainerState::from_json(text, "x/trainer_state.json"); });
  };
  std::string twice = valid_state().to_json();
  twice.insert(twice.find('{') + 1, "\"step\": 1,");
  EXPECT_NE(bad(twice).find("x/trainer_state.json: field \"step\" appears twice"), std::string::npos) << bad(twice);
  std::string nested = with("sampler.index", 12);
  nested.insert(nested.find("\"sampler\":{") + 11, "\"epoch\":0,");
  EXPECT_NE(bad(nested).find("field \"epoch\" appears twice"), std::string::npos) << bad(nested);
  EXPECT_NE(bad(with("version", 99)).find("x/trainer_state.json: field \"version\" is 99, expected 1"),
            std::string::npos);
  EXPECT_NE(bad(with("version", "1")).find("field \"version\" is \"1\", expected 1"), std::string::npos);
  EXPECT_NE(bad(with("weights_only", 1)).find("field \"weights_only\" is 1, expected true or false"),
            std::string::npos);
  // The same key in two different objects is fine ("index" at top level would not clash with sampler's).
  EXPECT_NO_THROW(TrainerState::from_json(valid_state().to_json(), "ts.json"));
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

// A LibTorch archive (zip) copied with every storage location "cpu" in its pickled tensors rewritten
// to `location`: the file a rank would have written from that device, made on a machine without one.
// Returns how many locations were rewritten.
int relocate_archive(const fs::path& in, const fs::path& out, const std::string& location) {
  caffe2::serialize::PyTorchStreamReader reader(in.string());
  int rewritten = 0;
  {
    caffe2::serialize::PyTorchStreamWriter writer(out.string());
    writer.setMinVersion(reader.version());
    for (const auto& name : reader.getAllRecords()) {
      if (name == "version" || starts_with(name, ".data/")) continue;  // the writer adds its own
      auto [data, size] = reader.getRecord(name);
      std::string bytes(static_cast<const char*>(data.get()), size);
      if (name.size() >= 8 && name.compare(name.size() - 8, 8, "data.pkl") == 0) {
        // Pickle protocol 2, BINUNICODE: 'X', uint32 length, bytes (no frames, so lengths may change).
        const std::string from = std::string("X\x03\x00\x00\x00", 5) + "cpu";
        std::string to = "X";
        for (int i = 0; i < 4; ++i) to += static_cast<char>((location.size() >> (8 * i)) & 0xff);
        to += location;
        for (size_t at = bytes.find(from); at != std::string::npos; at = bytes.find(from, at + to.size())) {
          bytes.replace(at, from.size(), to);
          ++rewritten;
        }
      }
      writer.writeRecord(name, bytes.data(), bytes.size());
    }
    writer.writeEndOfFile();
  }
  return rewritten;
}

// Issue 23, item 5: optimizer.pt is read straight onto the optimizer's own device, whatever device
// wrote it. The file here says its tensors live on cuda:0 (as rank 0 of a GPU run writes it); on a
// machine without CUDA, LibTorch can only load it through a map location, so this fails when the
// loader gives none. What the CPU cannot show: that a GPU rank r then allocates nothing on cuda:0
// (same call with the rank's device; docs/gpu.md's check runs on a GPU).
TEST(Checkpoint, OptimizerStateLoadsOntoTheParametersDeviceWhateverSavedIt) {
  const fs::path dir = fresh_dir("optimizer_device");
  torch::manual_seed(5);
  at::Tensor p = torch::randn({3, 4}).set_requires_grad(true);
  torch::optim::AdamW saved({p}, torch::optim::AdamWOptions(1e-2));
  p.mutable_grad() = torch::randn({3, 4});
  saved.step();
  {
    torch::serialize::OutputArchive a;
    saved.save(a);
    a.save_to((dir / "cpu.pt").string());
  }
  fs::create_directories(dir / "ckpt");
  ASSERT_GE(relocate_archive(dir / "cpu.pt", dir / "ckpt" / "optimizer.pt", "cuda:0"), 1);
  if (!torch::cuda::is_available()) {
    torch::serialize::InputArchive raw;  // without a map location: the saved device
    EXPECT_ANY_THROW(raw.load_from((dir / "ckpt" / "optimizer.pt").string()));
  }
  at::Tensor q = torch::zeros({3, 4}).set_requires_grad(true);
  torch::optim::AdamW loaded({q}, torch::optim::AdamWOptions(1e-2));
  EXPECT_EQ(optimizer_device(loaded), c10::Device(c10::kCPU));
  load_optimizer_state((dir / "ckpt").string(), loaded);
  const auto& want = static_cast<torch::optim::AdamWParamState&>(*saved.state().at(p.unsafeGetTensorImpl()));
  const auto& got = static_cast<torch::optim::AdamWParamState&>(*loaded.state().at(q.unsafeGetTensorImpl()));
  EXPECT_TRUE(got.exp_avg().is_cpu());
  EXPECT_TRUE(got.exp_avg_sq().is_cpu());
  EXPECT_TRUE(torch::equal(got.exp_avg(), want.exp_avg()));
  EXPECT_TRUE(torch::equal(got.exp_avg_sq(), want.exp_avg_sq()));
  EXPECT_EQ(got.step(), want.step());
}

// Issue 29 item 2: the fp32 masters of a bf16 run are read back tensor by tensor into the tensors that
// resume into (no map of clones). Reference: the saved tensors themselves; the copy is exact (F32 into
// fp32), so equality, no tolerance. Also: no file -> false and nothing touched; a name the file lacks, a
// wrong shape -> an error naming master_weights.safetensors and the tensor.
TEST(Checkpoint, MasterWeightsLoadIntoTheGivenTensorsInPlace) {
  Tiny t;
  const fs::path run = fresh_dir("masters");
  SaveRequest r = t.request(1);
  torch::manual_seed(11);
  std::vector<std::pair<std::string, at::Tensor>> saved;
  for (const auto& [name, p] : t.model->hf_named_parameters()) saved.emplace_back(name, torch::randn(p.sizes()));
  r.master_weights = saved;
  const std::string dir = save_checkpoint(run.string(), r, 0);
  std::vector<std::pair<std::string, at::Tensor>> into;
  for (const auto& [name, s] : saved) into.emplace_back(name, torch::zeros_like(s));
  const void* first = into.front().second.data_ptr();
  ASSERT_TRUE(load_master_weights_into(dir, into));
  EXPECT_EQ(into.front().second.data_ptr(), first);  // written in place
  for (size_t i = 0; i < into.size(); ++i) EXPECT_TRUE(torch::equal(into[i].second, saved[i].second)) << into[i].first;

  const std::string plain = save_checkpoint(fresh_dir("no_masters").string(), t.request(1), 0);
  at::Tensor untouched = torch::zeros({2});
  EXPECT_FALSE(load_master_weights_into(plain, {{"x", untouched}}));
  EXPECT_TRUE(torch::equal(untouched, torch::zeros({2})));

  const auto error_of = [&](const std::vector<std::pair<std::string, at::Tensor>>& targets) {
    try {
      load_master_weights_into(dir, targets);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  const std::string missing = error_of({{"model.layers.7.mlp.up_proj.weight", torch::zeros({2})}});
  EXPECT_NE(missing.find("master_weights.safetensors: missing tensor model.layers.7.mlp.up_proj.weight"),
            std::string::npos)
      << missing;
  const std::string shape = error_of({{saved.front().first, torch::zeros({3})}});
  EXPECT_NE(shape.find(saved.front().first + " has the wrong shape"), std::string::npos) << shape;
}

// Issue 23, item 11: the per-rank CUDA generator states travel in trainer_state.json. The CPU shows the
// format (round trip, validation, a checkpoint without them still loads) and the device-generic
// get/set on the CPU generator; the CUDA generator itself (and LoRA dropout after a GPU resume) needs a GPU.
TEST(TrainerState, CudaRngStatesRoundTripAndOlderCheckpointsStillLoad) {
  TrainerState s = valid_state();
  s.world_size = 2;
  s.cuda_rng_states_hex = {"00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef"};
  const TrainerState back = TrainerState::from_json(s.to_json(), "ts.json");
  EXPECT_EQ(back.cuda_rng_states_hex, s.cuda_rng_states_hex);
  // A CPU run writes no field; a checkpoint from before the field existed has none either.
  EXPECT_EQ(nlohmann::json::parse(valid_state().to_json()).count("cuda_rng_states"), 0u);
  EXPECT_TRUE(TrainerState::from_json(valid_state().to_json(), "old.json").cuda_rng_states_hex.empty());
  auto bad = [&](const nlohmann::json& states) {
    auto j = nlohmann::json::parse(s.to_json());
    j["cuda_rng_states"] = states;
    return error_of([&] { TrainerState::from_json(j.dump(), "x/trainer_state.json"); });
  };
  EXPECT_NE(bad(nlohmann::json::array({"00"})).find("x/trainer_state.json: field \"cuda_rng_states\" is not an array "
                                                    "of 2 strings"),
            std::string::npos);
  EXPECT_NE(bad(nlohmann::json::array({"00", 5})).find("\"cuda_rng_states\"[1] is 5"), std::string::npos);
  EXPECT_NE(bad(nlohmann::json::array({"00", "abc"})).find("[1] has 3 hex digits"), std::string::npos);
  EXPECT_NE(bad(nlohmann::json::array({"zz", "00"})).find("[0] has a non-hex character at offset 0"),
            std::string::npos);
}

TEST(TrainerState, DeviceRngStateRestoresTheDrawsOnTheCpuGenerator) {
  const c10::Device cpu(c10::kCPU);
  torch::manual_seed(11);
  const std::string state = rng_state_hex(cpu);
  EXPECT_EQ(state, cpu_rng_state_hex());
  const at::Tensor first = torch::rand({8});
  set_rng_state_hex(cpu, state);
  EXPECT_TRUE(torch::equal(torch::rand({8}), first));
  EXPECT_NE(error_of([&] { set_rng_state_hex(cpu, state.substr(0, 32)); }).find("expected exactly"),
            std::string::npos);
  EXPECT_NE(error_of([&] { set_rng_state_hex(cpu, "x" + state.substr(1)); }).find("non-hex"), std::string::npos);
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
