// End-to-end trainer checks on a tiny model with the shipped demo tokenizer (small vocabulary, so
// every step takes milliseconds on CPU).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sftgo/checkpoint/checkpoint.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"
#include "sftgo/train/precision.h"
#include "sftgo/train/trainer.h"
#include "../../src/train/step.h"
#include "../../src/train/trainer_impl.h"

namespace sftgo::train {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sftgo_test_trainer_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // The first 32 demo conversations: enough for several steps of 8.
    std::ifstream in(std::string(SFTGO_SOURCE_DIR) + "/data/demo/demo_sft.jsonl");
    std::ofstream out(dir_ / "train.jsonl");
    std::string line;
    for (int i = 0; i < 32 && std::getline(in, line); ++i) out << line << "\n";
    torch::set_num_threads(1);  // bitwise-reproducible CPU reductions for the exact-resume check
  }
  void TearDown() override { fs::remove_all(dir_); }

  LoadedConfig config(const std::string& run, std::vector<std::string> extra = {}) {
    std::vector<std::string> o = {"run.output_dir=" + (dir_ / run).string(),
                                  "tokenizer.path=" + std::string(SFTGO_SOURCE_DIR) + "/data/demo/tokenizer",
                                  "data.path=" + (dir_ / "train.jsonl").string(),
                                  "data.cache_dir=",  // no cache: every run prepares from scratch
                                  "data.max_seq_len=128",
                                  "model.preset=tiny",
                                  "model.vocab_size=1408",
                                  "model.hidden_size=32",
                                  "model.intermediate_size=64",
                                  "model.num_layers=2",
                                  "model.num_heads=4",
                                  "model.num_kv_heads=2",
                                  "model.device=cpu",
                                  "grouping.function=tfidf",
                                  "grouping.top_k_percent=30",
                                  "loss.objective=sftgo",
                                  "loss.lambda=0.9",
                                  "loss.scope=step",
                                  "optim.lr=3e-3",
                                  "optim.warmup_steps=0",
                                  "optim.schedule=constant",
                                  "optim.weight_decay=0.01",
                                  "train.global_batch_size=8",
                                  "train.micro_batch_size=8",
                                  "train.max_steps=4",
                                  "train.log_every=100",
                                  "train.num_threads=1"};
    for (auto& e : extra) o.push_back(e);
    return load_config("", o);
  }

  static std::map<std::string, at::Tensor> weights(const Trainer& t) {
    std::map<std::string, at::Tensor> out;
    for (const auto& [name, p] : t.named_parameters()) out[name] = p.detach().clone();
    return out;
  }

  static double max_diff(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b) {
    double d = 0;
    for (const auto& [name, t] : a) d = std::max(d, (t - b.at(name)).abs().max().item<double>());
    return d;
  }

  fs::path dir_;
};

TEST_F(TrainerTest, LossFallsAndOutputsAreWritten) {
  std::vector<double> losses;
  TrainerHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    losses.push_back(m.loss);
    EXPECT_GT(m.count_imp, 0);
    EXPECT_GT(m.count_unimp, m.count_imp);  // 30% important
    EXPECT_GE(m.worst_group, 0);
    return true;
  };
  Trainer t(config("run", {"train.max_steps=24"}), hooks);
  TrainResult r = t.run();
  ASSERT_EQ(losses.size(), 24u);
  const double first = (losses[0] + losses[1] + losses[2]) / 3, last = (losses[21] + losses[22] + losses[23]) / 3;
  EXPECT_LT(last, 0.8 * first) << "first " << first << " last " << last;
  EXPECT_EQ(r.steps, 24);
  EXPECT_TRUE(fs::exists(dir_ / "run/metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir_ / "run/resolved_config.yaml"));
  EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "model.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "tokenizer.json"));
  EXPECT_EQ(split(trim(read_file((dir_ / "run/metrics.jsonl").string())), '\n').size(), 24u);
}

// The gradient-accumulation bug of other trainers must not exist: with scope=step, 1 x 8, 2 x 4 and
// 8 x 1 (micro-batch x accumulation) give the same update.
TEST_F(TrainerTest, AccumulationEquivalence) {
  for (const std::string objective : {"sftgo", "ce"}) {
    std::vector<std::map<std::string, at::Tensor>> results;
    for (const std::string micro : {"8", "4", "1"}) {
      std::vector<std::string> extra = {"train.micro_batch_size=" + micro, "train.max_steps=3",
                                        "loss.objective=" + objective};
      if (objective == "ce") extra.push_back("grouping.function=none");
      Trainer t(config("acc_" + objective + micro, extra));
      t.run();
      results.push_back(weights(t));
    }
    // Tolerance: the same sums in a different order (padding to another length changes the matmul
    // blocking), fp32; Adam divides by sqrt(v), so 1e-6-level gradient differences can move a
    // weight by up to ~lr * 1e-3. 2e-5 is far below one update (lr = 3e-3).
    EXPECT_LT(max_diff(results[0], results[1]), 2e-5) << objective << " 1x8 vs 2x4";
    EXPECT_LT(max_diff(results[0], results[2]), 2e-5) << objective << " 1x8 vs 8x1";
  }
}

// A run killed after step 3 (last checkpoint at step 2) and resumed with --resume auto ends with
// exactly the weights of the uninterrupted run.
TEST_F(TrainerTest, KillAndResumeIsExact) {
  std::map<std::string, at::Tensor> straight;
  {
    Trainer t(config("straight", {"train.save_every=2", "train.max_steps=5", "train.micro_batch_size=4"}));
    t.run();
    straight = weights(t);
  }
  {
    TrainerHooks kill;
    kill.on_step = [](const StepMetrics& m) { return m.step < 3; };  // dies after step 3, unsaved
    Trainer t(config("resumed", {"train.save_every=2", "train.max_steps=5", "train.micro_batch_size=4"}), kill);
    TrainResult r = t.run();
    EXPECT_EQ(r.steps, 3);
  }
  auto ckpts = checkpoint::list_checkpoints((dir_ / "resumed").string());
  ASSERT_EQ(ckpts.size(), 1u);
  EXPECT_EQ(fs::path(ckpts[0]).filename(), "step_00000002");
  Trainer t(config("resumed", {"train.save_every=2", "train.max_steps=5", "train.micro_batch_size=4"}));
  TrainResult r = t.run("auto");
  EXPECT_EQ(r.steps, 5);
  auto resumed = weights(t);
  for (const auto& [name, w] : straight) EXPECT_TRUE(torch::equal(w, resumed.at(name))) << name;
  // The metrics log has one line per step, without the killed run's step 3 twice.
  EXPECT_EQ(split(trim(read_file((dir_ / "resumed/metrics.jsonl").string())), '\n').size(), 5u);
}

// precision bf16: the model computes in bf16 while AdamW updates fp32 master weights; checkpoints
// carry the masters, so a killed and resumed bf16 run also ends bit-identical.
TEST_F(TrainerTest, Bf16WithFp32MastersResumesExactly) {
  const std::vector<std::string> bf16 = {"train.precision=bf16", "train.save_every=2", "train.max_steps=5",
                                         "train.micro_batch_size=4"};
  std::vector<double> losses;
  TrainerHooks record;
  record.on_step = [&](const StepMetrics& m) {
    losses.push_back(m.loss);
    return true;
  };
  std::map<std::string, at::Tensor> straight;
  {
    Trainer t(config("bf16_straight", bf16), record);
    t.run();
    straight = weights(t);
    for (const auto& [name, w] : straight) EXPECT_EQ(w.scalar_type(), at::kBFloat16) << name;
  }
  ASSERT_EQ(losses.size(), 5u);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_TRUE(std::filesystem::exists(dir_ / "bf16_straight/checkpoints/step_00000004/master_weights.safetensors"));
  {
    TrainerHooks kill;
    kill.on_step = [](const StepMetrics& m) { return m.step < 3; };
    Trainer t(config("bf16_resumed", bf16), kill);
    t.run();
  }
  Trainer t(config("bf16_resumed", bf16));
  t.run("auto");
  auto resumed = weights(t);
  for (const auto& [name, w] : straight) EXPECT_TRUE(torch::equal(w, resumed.at(name))) << name;
}

TEST_F(TrainerTest, EvalLossLinesInMetrics) {
  Trainer t(
      config("eval", {"data.eval_path=" + (dir_ / "train.jsonl").string(), "train.eval_every=2", "train.max_steps=5"}));
  t.run();
  std::vector<nlohmann::json> evals;
  int step_lines = 0;
  for (const auto& line : split(trim(read_file((dir_ / "eval/metrics.jsonl").string())), '\n')) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss_ce"))
      evals.push_back(j);
    else
      ++step_lines;
  }
  EXPECT_EQ(step_lines, 5);
  ASSERT_EQ(evals.size(), 4u);  // the initial weights (step 0), steps 2, 4 and the end (5)
  EXPECT_EQ(evals[0]["step"], 0);
  EXPECT_EQ(evals[1]["step"], 2);
  EXPECT_EQ(evals[3]["step"], 5);
  EXPECT_EQ(evals[1]["eval_tokens"], 305);  // every trained token of the 32 examples
  // Evaluating on the training data itself: the loss must go down as training proceeds.
  EXPECT_LT(evals[1]["eval_loss_ce"].get<double>(), evals[0]["eval_loss_ce"].get<double>());
  EXPECT_LT(evals[3]["eval_loss_ce"].get<double>(), evals[1]["eval_loss_ce"].get<double>());
  EXPECT_THROW(Trainer(config("eval_bad", {"train.eval_every=2"})), Error);  // no eval_path
}

TEST_F(TrainerTest, StopRequestSavesAndReturns) {
  TrainerHooks hooks;
  hooks.on_step = [](const StepMetrics& m) {
    if (m.step == 2) request_stop();
    return true;
  };
  Trainer t(config("stop"), hooks);
  TrainResult r = t.run();
  clear_stop_request();
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps, 2);
  EXPECT_EQ(fs::path(r.last_checkpoint).filename(), "step_00000002");
}

TEST_F(TrainerTest, NonFiniteTrainingStopsWithCheckpoint) {
  Trainer t(config("nan", {"optim.lr=1e30", "optim.grad_clip=0", "train.max_steps=10", "train.max_nan_skips=2"}));
  try {
    t.run();
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(checkpoint::list_checkpoints((dir_ / "nan").string()).empty());
}

// Rho-1 reference losses are cached on disk: a second run (another seed, a restart) loads them and
// trains exactly as the first; touching the reference weights makes a new cache entry.
TEST_F(TrainerTest, Rho1ReferenceLossesAreCachedOnDisk) {
  std::string ref;
  {
    Trainer t(config("ref_c", {"train.max_steps=1"}));
    ref = t.run().last_checkpoint;
  }
  const fs::path cache = dir_ / "rho1_cache";
  auto cache_files = [&] {
    std::vector<std::string> out;
    if (fs::exists(cache))
      for (const auto& e : fs::directory_iterator(cache))
        if (starts_with(e.path().filename().string(), "groups-rho1-ref-")) out.push_back(e.path().string());
    return out;
  };
  auto run = [&](const std::string& name) {
    Trainer t(config(name, {"grouping.function=rho1", "grouping.rho1_reference_model=" + ref, "train.max_steps=2",
                            "data.cache_dir=" + cache.string()}));
    t.run();
    return t.named_parameters();
  };
  const auto first = run("rho1_c1");
  ASSERT_EQ(cache_files().size(), 1u) << "the first run writes the reference losses";
  const auto second = run("rho1_c2");
  ASSERT_EQ(cache_files().size(), 1u) << "the second run reads them";
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i)
    EXPECT_TRUE(torch::equal(first[i].second, second[i].second)) << first[i].first;
  for (const auto& e : fs::directory_iterator(ref))
    if (e.path().extension() == ".safetensors")
      fs::last_write_time(e.path(), fs::last_write_time(e.path()) + std::chrono::seconds(5));
  run("rho1_c3");
  EXPECT_EQ(cache_files().size(), 2u) << "changed reference weights must not reuse the old losses";
}

// Rho-1: a frozen reference model (here: a short run of the same architecture) scores every
// example once; each step marks the top-k% excess-loss tokens of every sequence important.
TEST_F(TrainerTest, Rho1SelectsByExcessLossOverTheReference) {
  std::string ref;
  {
    Trainer t(config("ref", {"train.max_steps=3"}));
    ref = t.run().last_checkpoint;
  }
  std::vector<StepMetrics> steps;
  TrainerHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    steps.push_back(m);
    return true;
  };
  Trainer t(config("rho1", {"grouping.function=rho1", "grouping.rho1_reference_model=" + ref, "loss.objective=rho1",
                            "train.micro_batch_size=4"}),
            hooks);
  t.run();
  ASSERT_EQ(steps.size(), 4u);
  for (const auto& m : steps) {
    const double share = static_cast<double>(m.count_imp) / static_cast<double>(m.count_imp + m.count_unimp);
    // ceil(30% of each sequence's trained tokens): a little above 30% on short responses.
    EXPECT_GE(share, 0.30) << m.step;
    EXPECT_LE(share, 0.50) << m.step;
    EXPECT_TRUE(std::isfinite(m.loss)) << m.step;
    EXPECT_DOUBLE_EQ(m.loss, m.loss_imp) << "rho1 objective = mean CE over the selected tokens";
  }
  // A reference with another vocabulary is refused before any training step.
  std::string other;
  {
    Trainer o(config("ref_other", {"train.max_steps=1", "model.vocab_size=1472"}));
    other = o.run().last_checkpoint;
  }
  try {
    Trainer bad(config("rho1_bad", {"grouping.function=rho1", "grouping.rho1_reference_model=" + other}));
    FAIL() << "expected a vocabulary mismatch error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Trainer(config("rho1_none", {"grouping.function=rho1"})), Error);
}

// Rho-1 takes the current loss from the training forward itself (the fused loss's groups hook), not
// from a second no-grad forward. The model is the same for both, so the per-token losses and hence
// the chosen tokens must equal those of the old extra forward (grouping.rho1_extra_forward=true).
// The step metrics are means over the chosen tokens: equal means (1e-6 relative: the same losses from
// two fp32 computations, the fused loss's vocabulary blocks vs full logits + logsumexp) with equal
// counts mean equal groups. Step 1 (identical weights) is checked tightly, later steps loosely.
TEST_F(TrainerTest, Rho1GroupsFromTrainingForwardEqualExtraForward) {
  std::string ref;
  {
    Trainer t(config("ref", {"train.max_steps=3"}));
    ref = t.run().last_checkpoint;
  }
  struct Case {
    std::string selection, objective;
  };
  for (const Case& c : {Case{"sequence", "rho1"}, Case{"batch", "rho1"}, Case{"sequence", "sftgo"}}) {
    auto run = [&](bool extra) {
      std::vector<StepMetrics> steps;
      TrainerHooks hooks;
      hooks.on_step = [&](const StepMetrics& m) {
        steps.push_back(m);
        return true;
      };
      const std::string name = "rho1_" + c.selection + "_" + c.objective + (extra ? "_extra" : "_fused");
      Trainer t(config(name, {"grouping.function=rho1", "grouping.rho1_reference_model=" + ref,
                              "grouping.selection=" + c.selection, "loss.objective=" + c.objective,
                              "train.micro_batch_size=4", "train.max_steps=3",
                              std::string("grouping.rho1_extra_forward=") + (extra ? "true" : "false")}),
                hooks);
      t.run();
      return steps;
    };
    const auto fused = run(false);
    const auto extra = run(true);
    ASSERT_EQ(fused.size(), 3u);
    ASSERT_EQ(extra.size(), 3u);
    const std::string what = c.selection + " " + c.objective;
    for (size_t i = 0; i < fused.size(); ++i) {
      const double tol = i == 0 ? 1e-6 : 1e-4;
      EXPECT_EQ(fused[i].count_imp, extra[i].count_imp) << what << " step " << i + 1;
      EXPECT_EQ(fused[i].count_unimp, extra[i].count_unimp) << what << " step " << i + 1;
      EXPECT_NEAR(fused[i].loss_imp, extra[i].loss_imp, tol * extra[i].loss_imp) << what << " step " << i + 1;
      EXPECT_NEAR(fused[i].loss_unimp, extra[i].loss_unimp, tol * extra[i].loss_unimp) << what << " step " << i + 1;
      EXPECT_NEAR(fused[i].loss, extra[i].loss, tol * extra[i].loss) << what << " step " << i + 1;
    }
  }
}

// precision bf16_autocast: fp32 weights and AdamW state, bf16 matmuls inside autocast regions.
// Activation checkpointing recomputes each block in backward, after the forward's autocast region has
// closed; it must re-enter the forward's autocast state, or the weight gradients would come from an
// fp32 recomputation of a bf16 forward. 2 micro-batches of 4: the sftgo no-grad pre-pass runs too.
TEST_F(TrainerTest, Bf16AutocastKeepsFp32WeightsAndCheckpointingRecomputesUnderAutocast) {
  auto train = [&](const std::string& name, const std::string& precision, bool ckpt, std::vector<double>* losses) {
    TrainerHooks record;
    record.on_step = [losses](const StepMetrics& m) {
      losses->push_back(m.loss);
      return true;
    };
    Trainer t(config(name, {"train.precision=" + precision, "train.micro_batch_size=4", "train.max_steps=3",
                            std::string("model.activation_checkpointing=") + (ckpt ? "true" : "false")}),
              record);
    t.run();
    return weights(t);
  };
  std::vector<double> l_amp, l_amp_ckpt, l_fp32;
  const auto amp = train("amp", "bf16_autocast", false, &l_amp);
  const auto amp_ckpt = train("amp_ckpt", "bf16_autocast", true, &l_amp_ckpt);
  const auto fp32 = train("fp32", "fp32", false, &l_fp32);
  for (const auto& [name, w] : amp) EXPECT_EQ(w.scalar_type(), at::kFloat) << name;
  // The recomputation repeats the forward's ops on the same inputs (CPU, one thread): the same bits.
  for (const auto& [name, w] : amp) EXPECT_TRUE(torch::equal(w, amp_ckpt.at(name))) << name;
  ASSERT_EQ(l_amp.size(), 3u);
  EXPECT_EQ(l_amp, l_amp_ckpt);
  // Autocast really computes in bf16: step 1 (same weights) differs from fp32 by bf16 rounding, which
  // is below one bf16 step of the loss (2^-8 relative, 8 significant bits) but not zero.
  EXPECT_NE(l_amp[0], l_fp32[0]);
  EXPECT_NEAR(l_amp[0], l_fp32[0], std::ldexp(std::abs(l_fp32[0]), -8));
  EXPECT_GT(max_diff(amp, fp32), 0.0);
  // bf16 weights cannot be autocast (autocast casts fp32 weights per op).
  EXPECT_THROW(Trainer(config("bad", {"train.precision=bf16_autocast", "model.dtype=bfloat16"})), Error);
}

// After repeated non-finite steps the run points to the newest checkpoint whose next step was finite
// (checkpoint step_K holds the weights step K+1 ran with) and writes nothing over it. Here the warm-up
// makes step 1 a no-op (lr 0), step 2 applies a 1e30 learning rate (finite loss, ruined weights), and
// every later step is non-finite: step_00000001 is the last good state.
TEST_F(TrainerTest, NonFiniteStopPointsToTheLastGoodCheckpoint) {
  Trainer t(config("nan_good", {"optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=2", "train.max_steps=10",
                                "train.max_nan_skips=1", "train.save_every=1", "train.keep_last=5"}));
  try {
    t.run();
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_NE(std::string(e.what()).find("step_00000001"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(dir_ / "nan_good/checkpoints/step_00000001/trainer_state.json"));
  EXPECT_FALSE(fs::exists(dir_ / "nan_good/checkpoints/step_00000004")) << "nothing is saved over the good state";
}

// Fewer skipped steps than train.max_nan_skips, but not a single update applied: an error, not success.
TEST_F(TrainerTest, RunWhoseEveryStepWasSkippedFails) {
  Trainer t(config("all_nan", {"model.init_std=1e30", "train.max_steps=2", "train.max_nan_skips=10"}));
  try {
    t.run();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_NE(std::string(e.what()).find("no update was applied"), std::string::npos) << e.what();
  }
}

// A checkpoint beyond this run's last step cannot be resumed into it.
TEST_F(TrainerTest, ResumePastTheLastStepIsRefused) {
  {
    Trainer t(config("past", {"train.max_steps=4"}));
    t.run();
  }
  Trainer t(config("past", {"train.max_steps=2"}));
  EXPECT_THROW(t.run("auto"), Error);
}

// Plain SFT (objective ce) with a grouping function logs the real group means (the paper's Figure 1),
// train and held-out, while its loss stays the mean CE.
TEST_F(TrainerTest, CeObjectiveLogsRealGroupLosses) {
  std::vector<StepMetrics> steps;
  TrainerHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    steps.push_back(m);
    return true;
  };
  Trainer t(config("ce_groups", {"loss.objective=ce", "train.max_steps=2",
                                 "data.eval_path=" + (dir_ / "train.jsonl").string(), "train.eval_every=2"}),
            hooks);
  t.run();
  ASSERT_EQ(steps.size(), 2u);
  for (const auto& m : steps) {
    EXPECT_GT(m.count_imp, 0);
    EXPECT_GT(m.loss_imp, 0.0);
    EXPECT_NE(m.loss_imp, m.loss_unimp);
    EXPECT_NEAR(m.loss, m.loss_ce, 1e-9 * m.loss_ce);
  }
  std::ifstream in(dir_ / "ce_groups/metrics.jsonl");
  std::string line, eval;
  while (std::getline(in, line))
    if (line.find("eval_loss") != std::string::npos) eval = line;
  ASSERT_FALSE(eval.empty());
  const auto j = nlohmann::json::parse(eval);
  EXPECT_GT(j.at("eval_loss_imp").get<double>(), 0.0);
}

// LoRA through the trainer: only the adapters change, each checkpoint carries a PEFT adapter directory,
// a killed run resumes bit-identically, and Rho-1 can take the frozen base model as its reference.
TEST_F(TrainerTest, LoraTrainsAdaptersOnlyAndResumesExactly) {
  const std::vector<std::string> lora = {"lora.enabled=true",  "lora.rank=4",       "lora.alpha=8",
                                         "train.save_every=2", "train.max_steps=4", "train.micro_batch_size=4"};
  std::map<std::string, at::Tensor> base;
  {
    Trainer t(config("lora_base", {"train.max_steps=1"}));
    base = weights(t);  // the same seed gives the same initial base weights
  }
  std::map<std::string, at::Tensor> straight;
  {
    Trainer t(config("lora_straight", lora));
    const TrainResult r = t.run();
    straight = weights(t);
    EXPECT_LT(r.last_loss, r.first_loss);
    EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "adapter/adapter_config.json"));
    EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "adapter/adapter_model.safetensors"));
  }
  EXPECT_EQ(max_diff(base, straight), 0.0) << "the base weights stay frozen";
  {
    TrainerHooks kill;
    kill.on_step = [](const StepMetrics& m) { return m.step < 3; };
    Trainer t(config("lora_resumed", lora), kill);
    t.run();
  }
  Trainer resumed(config("lora_resumed", lora));
  const TrainResult r2 = resumed.run("auto");
  Trainer straight_again(config("lora_straight2", lora));
  const TrainResult r1 = straight_again.run();
  EXPECT_EQ(r1.last_loss, r2.last_loss) << "resumed LoRA run ends on the same loss, bit for bit";
  // Rho-1 with the frozen base as the reference model.
  Trainer rho1(config("lora_rho1", {"lora.enabled=true", "lora.rank=4", "grouping.function=rho1",
                                    "grouping.rho1_reference_model=base", "train.max_steps=2"}));
  EXPECT_TRUE(std::isfinite(rho1.run().last_loss));
  EXPECT_THROW(Trainer(config("rho1_base_no_lora", {"grouping.function=rho1", "grouping.rho1_reference_model=base"})),
               Error);
}

// A dynamic grouping function plugs in through the registry and the DynamicGroupingFunction interface
// alone: this one (defined only here, unknown to the trainer) marks the top-k% current-loss tokens of
// each sequence. The trainer must drive it from its declared requirements, never from its name.
class TopLossGrouping final : public grouping::DynamicGroupingFunction {
 public:
  explicit TopLossGrouping(double k) : k_(k) {}
  std::string name() const override { return "test_top_loss"; }
  grouping::Requirements requirements() const override { return {.current_model_loss = true}; }
  std::string params() const override { return ""; }
  void prepare(std::vector<data::TokenizedExample>& examples, const grouping::PrepareContext&) override { ++prepared; }
  int64_t important_count(const grouping::MicroBatchView& b) const override {
    const at::Tensor per_row = b.trained.sum(1);  // [B]
    int64_t n = 0;
    for (int64_t r = 0; r < b.rows; ++r) n += grouping::num_important(per_row[r].item<int64_t>(), k_);
    return n;
  }
  at::Tensor select(const grouping::MicroBatchView& b, const at::Tensor& token_loss) const override {
    ++selected;
    // Per row: the ceil(k%) trained positions with the largest current loss.
    at::Tensor dense = at::full({b.rows * b.positions}, -INFINITY).index_put_({b.select}, token_loss);
    at::Tensor rows = dense.view({b.rows, b.positions});
    at::Tensor mask = at::zeros_like(rows, at::kByte);
    const at::Tensor per_row = b.trained.sum(1);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t n = grouping::num_important(per_row[r].item<int64_t>(), k_);
      if (n > 0) mask[r].index_fill_(0, std::get<1>(rows[r].topk(n)), 1);
    }
    return mask.reshape({-1}).index_select(0, b.select);
  }
  static inline int prepared = 0;
  static inline int selected = 0;

 private:
  double k_;
};

TEST_F(TrainerTest, DynamicGroupingFunctionPlugsInWithoutTrainerChanges) {
  static const bool registered = [] {
    grouping::register_grouping_function("test_top_loss", [](const grouping::GroupingOptions& o, const Tokenizer*) {
      return std::make_unique<TopLossGrouping>(o.top_k_percent);
    });
    return true;
  }();
  ASSERT_TRUE(registered);
  TopLossGrouping::prepared = TopLossGrouping::selected = 0;
  std::vector<StepMetrics> steps;
  TrainerHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    steps.push_back(m);
    return true;
  };
  Trainer t(config("plugin", {"grouping.function=test_top_loss", "train.max_steps=2", "train.micro_batch_size=4"}),
            hooks);
  t.run();
  EXPECT_EQ(TopLossGrouping::prepared, 1);
  EXPECT_GE(TopLossGrouping::selected, 2 * 2);  // every micro-batch of every step
  ASSERT_EQ(steps.size(), 2u);
  for (const auto& m : steps) {
    EXPECT_TRUE(std::isfinite(m.loss));
    EXPECT_GT(m.count_imp, 0);
    // The chosen tokens are the highest-loss ones: their mean CE is above the other group's.
    EXPECT_GT(m.loss_imp, m.loss_unimp);
  }
}

// A precision mode defined here, not in src/ (issue 26): a fixed loss scale of 2^10 on fp32 weights.
// The policy scales the gradients leaving the loss's two inputs (every parameter's gradient passes
// through one of them); its Updater divides them back before the real one clips and steps. Scaling by a
// power of two is exact in binary floating point (no value of this model nears overflow or the
// subnormals), so the run must equal the fp32 run bit for bit, while the updater saw gradients 2^10
// times larger.
constexpr double kTestLossScale = 1024.0;

class GradScale : public torch::autograd::Function<GradScale> {
 public:
  // x [any]: an identity whose backward multiplies the gradient by `scale`.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double scale) {
    ctx->saved_data["scale"] = scale;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    return {grad[0] * ctx->saved_data["scale"].toDouble(), at::Tensor()};
  }
};

class UnscalingUpdater final : public Updater {
 public:
  UnscalingUpdater(std::unique_ptr<Updater> inner, optim::NamedParameters params, double scale)
      : inner_(std::move(inner)), params_(std::move(params)), scale_(scale) {}
  UpdaterKind kind() const override { return inner_->kind(); }
  void before_last_backward() override { inner_->before_last_backward(); }
  void after_backward() override { inner_->after_backward(); }
  double step(double lr, double max_norm, bool finite) override {
    torch::NoGradGuard no_grad;
    double sq = 0;
    for (const auto& [name, p] : params_) {
      if (!p.grad().defined()) continue;
      sq += p.grad().to(at::kDouble).pow(2).sum().item<double>();
      p.grad().mul_(1.0 / scale_);
    }
    scaled_norms.push_back(std::sqrt(sq));
    return inner_->step(lr, max_norm, finite);
  }
  void zero_grad() override { inner_->zero_grad(); }
  double comm_seconds() const override { return inner_->comm_seconds(); }
  void add_to_save(checkpoint::SaveRequest& r, const std::string& staging) override { inner_->add_to_save(r, staging); }
  void resume(const std::string& dir) override { inner_->resume(dir); }
  static inline std::vector<double> scaled_norms;  // the gradient norm each step() received

 private:
  std::unique_ptr<Updater> inner_;
  optim::NamedParameters params_;
  double scale_;
};

class LossScalePolicy final : public PrecisionPolicy {
 public:
  std::string name() const override { return "test_loss_scale"; }
  at::Tensor loss_hidden(const at::Tensor& hidden) const override { return GradScale::apply(hidden, kTestLossScale); }
  at::Tensor loss_head(const at::Tensor& head) const override { return GradScale::apply(head, kTestLossScale); }
  std::unique_ptr<Updater> make_updater(const UpdaterSetup& s) const override {
    return std::make_unique<UnscalingUpdater>(PrecisionPolicy::make_updater(s), s.params, kTestLossScale);
  }
};

TEST_F(TrainerTest, PrecisionPolicyPlugsInWithoutTrainerChanges) {
  static const bool registered = [] {
    register_precision_policy("test_loss_scale", [] { return std::make_unique<LossScalePolicy>(); });
    return true;
  }();
  ASSERT_TRUE(registered);
  auto train = [&](const std::string& run, const std::string& precision, std::vector<double>& norms) {
    TrainerHooks hooks;
    hooks.on_step = [&](const StepMetrics& m) {
      norms.push_back(m.grad_norm);
      return true;
    };
    // Two micro-batches per step: gradients accumulate over backward passes before the unscale.
    Trainer t(config(run, {"train.precision=" + precision, "train.max_steps=3", "train.micro_batch_size=4"}), hooks);
    t.run();
    return weights(t);
  };
  std::vector<double> fp32_norms, scaled_norms;
  const auto fp32 = train("fp32", "fp32", fp32_norms);
  UnscalingUpdater::scaled_norms.clear();
  const auto scaled = train("scaled", "test_loss_scale", scaled_norms);
  EXPECT_EQ(max_diff(fp32, scaled), 0.0);
  ASSERT_EQ(scaled_norms.size(), 3u);
  ASSERT_EQ(UnscalingUpdater::scaled_norms.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(scaled_norms[i], fp32_norms[i]) << "step " << i + 1;
    // The scale reached the gradients: the updater saw norms 2^10 larger (summed in double here, in
    // fp32 per tensor by the updater: 1e-5 relative covers the different summation order).
    EXPECT_NEAR(UnscalingUpdater::scaled_norms[i], kTestLossScale * fp32_norms[i], 1e-5 * kTestLossScale * fp32_norms[i]);
  }
}

// The built-in policies: weight dtypes, the refused combination, and which Updater holds the trained
// parameters (bf16 keeps fp32 masters only of parameters held below fp32: LoRA adapters are fp32).
TEST(PrecisionPolicy, BuiltInsResolveDtypesAndUpdaters) {
  EXPECT_GE(precision_policy_names().size(), 3u);
  auto fp32 = make_precision_policy("fp32");
  auto bf16 = make_precision_policy("bf16");
  auto autocast = make_precision_policy("bf16_autocast");
  EXPECT_EQ(fp32->weight_dtype(c10::kFloat), c10::kFloat);
  EXPECT_EQ(bf16->weight_dtype(c10::kFloat), c10::kBFloat16);
  EXPECT_EQ(autocast->weight_dtype(c10::kFloat), c10::kFloat);
  try {
    autocast->weight_dtype(c10::kBFloat16);
    ADD_FAILURE() << "bf16_autocast accepted bfloat16 weights";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("model.dtype is bfloat16"), std::string::npos) << e.message();
  }
  EXPECT_EQ(fp32->forward_region(c10::DeviceType::CPU), nullptr);
  EXPECT_NE(autocast->forward_region(c10::DeviceType::CPU), nullptr);
  const at::Tensor h = torch::randn({3, 4});
  EXPECT_TRUE(fp32->loss_hidden(h).is_same(h));
  EXPECT_EQ(autocast->loss_hidden(h).scalar_type(), at::kBFloat16);
  EXPECT_EQ(autocast->loss_head(h).scalar_type(), at::kBFloat16);

  auto comm = dist::Comm::create(dist::LaunchEnv{}, {}, c10::kCPU);
  auto params = [](c10::ScalarType dtype) {
    return optim::NamedParameters{{"w", torch::zeros({2, 2}, dtype).set_requires_grad(true)}};
  };
  EXPECT_EQ(bf16->make_updater({comm, params(at::kBFloat16), {}, false})->kind(), UpdaterKind::kFp32Masters);
  EXPECT_EQ(bf16->make_updater({comm, params(at::kFloat), {}, false})->kind(), UpdaterKind::kPlain);  // LoRA
  EXPECT_EQ(bf16->make_updater({comm, params(at::kBFloat16), {}, true})->kind(), UpdaterKind::kZero1);
  EXPECT_EQ(fp32->make_updater({comm, params(at::kFloat), {}, false})->kind(), UpdaterKind::kPlain);
  EXPECT_EQ(autocast->make_updater({comm, params(at::kFloat), {}, true})->kind(), UpdaterKind::kZero1);
}

TEST(PrecisionPolicy, UnknownNameNamesTheRegisteredOnes) {
  try {
    make_precision_policy("bf61");
    ADD_FAILURE() << "an unknown train.precision was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(e.message().find("unknown train.precision 'bf61'"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("bf16_autocast"), std::string::npos) << e.message();
    EXPECT_NE(e.hint().find("did you mean 'bf16'"), std::string::npos) << e.hint();
  }
}

// The bf16 policy's Updater for LoRA, end to end: the trained parameters are the fp32 adapters, so no
// fp32 masters (no master_weights.safetensors), while the frozen base computes in bf16 and stays as
// loaded.
TEST_F(TrainerTest, Bf16LoraTrainsFp32AdaptersWithoutMasters) {
  std::vector<double> losses;
  TrainerHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    losses.push_back(m.loss);
    return true;
  };
  Trainer t(config("bf16_lora", {"train.precision=bf16", "model.dtype=bfloat16", "lora.enabled=true", "lora.rank=4",
                                 "lora.dropout=0", "optim.lr=1e-2", "train.max_steps=6"}),
            hooks);
  const auto before = weights(t);
  t.run();
  ASSERT_EQ(losses.size(), 6u);
  EXPECT_LT(losses.back(), losses.front());
  for (const auto& [name, w] : weights(t)) {
    EXPECT_EQ(w.scalar_type(), at::kBFloat16) << name;
    EXPECT_TRUE(torch::equal(w, before.at(name))) << name << " is frozen under LoRA";
  }
  const fs::path ckpt = dir_ / "bf16_lora/checkpoints/step_00000006";
  EXPECT_TRUE(fs::exists(ckpt / "adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(ckpt / "master_weights.safetensors"));
}

// Issue 29 item 3: loss.step_stats speculate runs the pre-pass plan's training bit for bit, also when
// every bet loses (SFTGO_TEST_BET_AGAINST=1: the step's gradients are discarded and its passes run
// again), with LoRA dropout (the redo replays the generator: same masks) and with groups chosen by the
// training forward (Rho-1: chosen again in the redo). Step 1 takes the pre-pass (nothing to bet on);
// SFTGO_TEST_BET_AGAINST bets on the previous step's losing group (lost unless the worst group
// changed) and redoes every speculated step: steps 2 to 6.
TEST_F(TrainerTest, SpeculatedStepStatsEqualThePrePassBitForBit) {
  struct Run {
    std::vector<StepMetrics> steps;
    std::map<std::string, at::Tensor> weights;
    int redone = 0;
  };
  auto run = [&](const std::string& name, std::vector<std::string> extra, bool against) {
    Run r;
    TrainerHooks hooks;
    hooks.on_step = [&](const StepMetrics& m) {
      r.steps.push_back(m);
      return true;
    };
    for (const char* e : {"train.micro_batch_size=2", "train.max_steps=6", "train.save_final=false"}) extra.push_back(e);
    if (against) ::setenv("SFTGO_TEST_BET_AGAINST", "1", 1);
    ::testing::internal::CaptureStderr();
    {
      Trainer t(config(name, extra), hooks);
      t.run();
      r.weights = weights(t);
    }
    const std::string err = ::testing::internal::GetCapturedStderr();
    ::unsetenv("SFTGO_TEST_BET_AGAINST");
    for (size_t at = err.find("step redone"); at != std::string::npos; at = err.find("step redone", at + 1)) ++r.redone;
    return r;
  };
  auto expect_identical = [&](const Run& a, const Run& b, const std::string& what) {
    ASSERT_EQ(a.steps.size(), b.steps.size()) << what;
    for (size_t i = 0; i < a.steps.size(); ++i) {
      EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << what << " step " << i + 1;
      EXPECT_EQ(a.steps[i].loss_imp, b.steps[i].loss_imp) << what << " step " << i + 1;
      EXPECT_EQ(a.steps[i].loss_unimp, b.steps[i].loss_unimp) << what << " step " << i + 1;
      EXPECT_EQ(a.steps[i].worst_group, b.steps[i].worst_group) << what << " step " << i + 1;
      EXPECT_EQ(a.steps[i].count_imp, b.steps[i].count_imp) << what << " step " << i + 1;
      EXPECT_EQ(a.steps[i].grad_norm, b.steps[i].grad_norm) << what << " step " << i + 1;
    }
    EXPECT_EQ(max_diff(a.weights, b.weights), 0.0) << what;
  };
  const Run prepass = run("prepass", {"loss.step_stats=prepass"}, false);
  const Run spec = run("speculate", {"loss.step_stats=speculate"}, false);
  const Run lost = run("lost", {"loss.step_stats=speculate"}, true);
  EXPECT_EQ(lost.redone, 5) << "steps redone";
  expect_identical(prepass, spec, "speculate");
  expect_identical(prepass, lost, "speculate, every bet lost");
  // LoRA dropout: auto takes the pre-pass (its means are of the undropped model); speculation is
  // still deterministic through a redo.
  const std::vector<std::string> lora = {"lora.enabled=true", "lora.rank=4", "lora.dropout=0.2",
                                         "loss.step_stats=speculate"};
  const Run lora_won = run("lora", lora, false), lora_lost = run("lora_lost", lora, true);
  EXPECT_EQ(lora_lost.redone, 5) << "steps redone";
  expect_identical(lora_won, lora_lost, "LoRA dropout, every bet lost");
  // Rho-1 groups from the training forward (sftgo objective over them).
  std::string ref;
  {
    Trainer t(config("ref", {"train.max_steps=1"}));
    ref = t.run().last_checkpoint;
  }
  const std::vector<std::string> rho1 = {"grouping.function=rho1", "grouping.rho1_reference_model=" + ref,
                                         "loss.step_stats=speculate"};
  const Run rho1_won = run("rho1", rho1, false), rho1_lost = run("rho1_lost", rho1, true);
  EXPECT_EQ(rho1_lost.redone, 5) << "steps redone";
  expect_identical(rho1_won, rho1_lost, "Rho-1 groups, every bet lost");
}

// Issue 23, item 1: train.save_final false skips only the save at the end. The run's metrics are all
// there; periodic saves and the save on a stop request still happen (so a stopped run can resume).
TEST_F(TrainerTest, SaveFinalFalseWritesMetricsButNoFinalCheckpoint) {
  {
    Trainer t(config("measure", {"train.save_final=false"}));
    const TrainResult r = t.run();
    EXPECT_EQ(r.steps, 4);
    EXPECT_EQ(r.last_checkpoint, "");
    EXPECT_TRUE(checkpoint::list_checkpoints((dir_ / "measure").string()).empty());
    EXPECT_FALSE(fs::exists(dir_ / "measure/checkpoints"));
    EXPECT_EQ(split(trim(read_file((dir_ / "measure/metrics.jsonl").string())), '\n').size(), 4u);
  }
  {
    Trainer t(config("default"));  // the default is unchanged: a final checkpoint
    EXPECT_EQ(fs::path(t.run().last_checkpoint).filename(), "step_00000004");
  }
  {
    Trainer t(config("periodic", {"train.save_final=false", "train.save_every=2", "train.max_steps=5"}));
    t.run();
    const auto saved = checkpoint::list_checkpoints((dir_ / "periodic").string());
    ASSERT_EQ(saved.size(), 2u);
    EXPECT_EQ(fs::path(saved.back()).filename(), "step_00000004");  // not step 5
  }
  TrainerHooks stop;
  stop.on_step = [](const StepMetrics& m) {
    if (m.step == 2) request_stop();
    return true;
  };
  Trainer t(config("stopped", {"train.save_final=false"}), stop);
  const TrainResult r = t.run();
  clear_stop_request();
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(fs::path(r.last_checkpoint).filename(), "step_00000002");
}

// Issue 23, item 6: bf16 weights under train.precision fp32 would train pure bf16; refused when the
// config loads (so `sftgo-train config` refuses it too), naming both keys and the fix. Every shipped
// config still loads.
TEST_F(TrainerTest, Bf16WeightsWithFp32PrecisionAreRefusedAtLoad) {
  try {
    config("pure_bf16", {"model.dtype=bfloat16"});
    FAIL() << "expected a config error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    const std::string what = e.what();
    EXPECT_NE(what.find("model.dtype is bfloat16 but train.precision is fp32"), std::string::npos) << what;
    EXPECT_NE(what.find("train.precision: bf16"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(config("mixed", {"model.dtype=bfloat16", "train.precision=bf16"}));
  EXPECT_NO_THROW(config("fp32", {"model.dtype=float32", "train.precision=fp32"}));
  int shipped = 0;
  for (const auto& e : fs::directory_iterator(std::string(SFTGO_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(load_config(e.path().string(), {})) << e.path();
    ++shipped;
  }
  EXPECT_GT(shipped, 30);
}

// Issue 23, item 8: the MFU numerator against a hand count. Per token a trained matmul weight of N
// values costs 6N (forward 2N, input gradient 2N, weight gradient 2N), a frozen one 4N; the LM head
// only at trained positions; attention 12 x heads x head_dim per (query, key) pair and layer.
TEST(Flops, HandCountForFullFineTuningAndLora) {
  model::LlamaConfig c = model::LlamaConfig::preset("tiny");
  c.vocab_size = 100;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.tie_word_embeddings = false;
  model::LlamaModel m(c);
  // Per layer: q 32x32, k 16x32, v 16x32, o 32x32, gate/up 64x32, down 32x64 = 9216 values.
  const double layers = 2 * 9216.0, head = 100 * 32.0, attention = 2 * 4 * 8.0;
  FlopsModel full = flops_model(*m);
  EXPECT_EQ(full.token_trained, layers);  // the embedding table is a lookup: not counted
  EXPECT_EQ(full.token_frozen, 0.0);
  EXPECT_EQ(full.head_trained, head);
  EXPECT_EQ(full.attention, attention);
  // One document of 10 tokens, 6 of them trained: 1 + 2 + ... + 10 = 55 attention pairs.
  EXPECT_DOUBLE_EQ(training_flops(full, 10, 6, 55), 6 * layers * 10 + 6 * head * 6 + 12 * attention * 55);

  model::LoraOptions lo;
  lo.rank = 4;
  lo.target_modules = {"q_proj", "v_proj"};
  model::apply_lora(*m, lo, 7);
  // Adapters per layer: q A [4,32] + B [32,4] = 256, v A [4,32] + B [16,4] = 192; the base is frozen.
  const FlopsModel lora = flops_model(*m);
  EXPECT_EQ(lora.token_trained, 2 * 448.0);
  EXPECT_EQ(lora.token_frozen, layers);
  EXPECT_EQ(lora.head_trained, 0.0);
  EXPECT_EQ(lora.head_frozen, head);
  const double per_step = training_flops(lora, 10, 6, 55);
  EXPECT_DOUBLE_EQ(per_step, (6 * 896.0 + 4 * layers) * 10 + 4 * head * 6 + 12 * attention * 55);
  // The old numerator, 6 x all base parameters x tokens, overstates this LoRA step by ~1.5x.
  EXPECT_GT(6 * (layers + 2 * head + 5 * 32) * 10 / per_step, 1.6);  // norms: 2 per layer + 1
  // Utilisation: FLOPs per second over the peak of every GPU of the job.
  EXPECT_DOUBLE_EQ(model_flops_utilization(4e14, 2.0, 1, 1e15), 0.2);
  EXPECT_DOUBLE_EQ(model_flops_utilization(4e14, 2.0, 2, 1e15), 0.1);
  EXPECT_EQ(model_flops_utilization(4e14, 2.0, 1, 0.0), -1.0);
}

// The attention pairs of a micro-batch from its positions (collate.h: 0.. per document, 0 at padding):
// documents of 3 and 4 tokens packed into one row with 2 padding slots: 6 + 10 pairs.
TEST(Flops, AttentionPairsFromPositions) {
  MicroBatch b;
  b.positions = torch::tensor({{0, 1, 2, 0, 1, 2, 3, 0, 0}, {0, 1, 2, 3, 4, 0, 0, 0, 0}}, torch::kLong);
  b.tokens = 12;
  EXPECT_EQ(attention_pairs(b), 6 + 10 + 15);
}

// Issue 23, item 11: every rank's CUDA generator state reaches rank 0 through one all-reduce of byte
// values. Shown here with two forked Gloo ranks and arbitrary hex (the CUDA generators need a GPU).
TEST(RngGather, EveryRanksHexArrivesInRankOrder) {
  auto world1 = dist::Comm::create(dist::LaunchEnv{}, dist::CommOptions{}, c10::kCPU);
  EXPECT_EQ(gather_hex(*world1, "00ff7a"), std::vector<std::string>{"00ff7a"});
  EXPECT_THROW(gather_hex(*world1, "abc"), Error);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);  // a free port for the store
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  std::vector<pid_t> kids;
  for (int r = 0; r < 2; ++r) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid > 0) {
      kids.push_back(pid);
      continue;
    }
    int code = 1;
    try {
      dist::LaunchEnv e;
      e.rank = r;
      e.world_size = 2;
      e.master_addr = "127.0.0.1";
      e.master_port = ntohs(a.sin_port);
      dist::CommOptions o;
      o.backend = "gloo";
      o.timeout_s = 60;
      auto comm = dist::Comm::create(e, o, c10::kCPU);
      const auto all = gather_hex(*comm, r == 0 ? "0123456789abcdef" : "fedcba9876543210ff");
      code = all == std::vector<std::string>{"0123456789abcdef", "fedcba9876543210ff"} ? 0 : 1;
      comm->shutdown();
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "rank %d: %s\n", r, ex.what());
    }
    ::_exit(code);
  }
  for (pid_t k : kids) {
    int status = 0;
    ::waitpid(k, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
}

TEST_F(TrainerTest, BadConfigFailsBeforeTraining) {
  EXPECT_THROW(Trainer(config("bad", {"grouping.function=tfidff"})), Error);
  EXPECT_THROW(Trainer(config("bad", {"data.path=/nonexistent.jsonl"})), Error);
  EXPECT_THROW(Trainer(config("bad", {"model.vocab_size=64"})), Error);  // tokenizer needs more ids
}

// elapsed_s is the run's training time across resumes (issue 29 item 5): trainer_state.json records it
// at each save and a resumed run continues from it, so metrics.jsonl's elapsed_s never goes back.
TEST_F(TrainerTest, ElapsedTimeContinuesAcrossAResume) {
  const std::vector<std::string> o = {"train.save_every=2", "train.max_steps=4", "train.micro_batch_size=4"};
  {
    TrainerHooks kill;
    kill.on_step = [](const StepMetrics& m) { return m.step < 3; };  // dies after step 3, saved at 2
    Trainer t(config("el", o), kill);
    t.run();
  }
  const auto st = checkpoint::load_trainer_state((dir_ / "el/checkpoints/step_00000002").string());
  EXPECT_GT(st.elapsed_s, 0.0);
  Trainer t(config("el", o));
  t.run("auto");
  std::vector<nlohmann::json> lines;
  for (const auto& l : split(trim(read_file((dir_ / "el/metrics.jsonl").string())), '\n'))
    lines.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(lines.size(), 4u);
  const double e2 = lines[1]["elapsed_s"].get<double>();
  EXPECT_LE(e2, st.elapsed_s);  // saved after step 2's line was written
  // Step 3 ran after the resume: its elapsed_s is at least the saved time plus its own step time (an
  // elapsed_s restarted from 0 would be about one step's time, far below two steps').
  EXPECT_GE(lines[2]["elapsed_s"].get<double>(), st.elapsed_s + lines[2]["step_s"].get<double>());
  EXPECT_GE(lines[3]["elapsed_s"].get<double>(), lines[2]["elapsed_s"].get<double>());
}

// A checkpoint is a HF model directory: the base model's generation_config.json (end-of-turn ids for
// generate()) is copied into it with the tokenizer files (issue 29 item 5).
TEST_F(TrainerTest, CheckpointsCarryTheBasesGenerationConfig) {
  std::string base;
  {
    Trainer t(config("gen_base", {"train.max_steps=1"}));
    base = t.run().last_checkpoint;
  }
  const std::string gen = "{\"bos_token_id\": 1, \"eos_token_id\": [2, 1336]}\n";
  write_file_atomic((fs::path(base) / "generation_config.json").string(), gen);
  Trainer t(config("gen_run", {"train.max_steps=1", "model.path=" + base}));
  const TrainResult r = t.run();
  ASSERT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "generation_config.json"));
  EXPECT_EQ(read_file((fs::path(r.last_checkpoint) / "generation_config.json").string()), gen);
}

// train.intermediate_checkpoints: weights (issue 29 item 5): periodic checkpoints hold the HF weights
// (byte for byte those of a full checkpoint of the same step) but no optimizer state; --resume, auto or
// by name, refuses them naming the checkpoint; the final checkpoint stays full.
TEST_F(TrainerTest, WeightsOnlyIntermediateCheckpointsAreLoadableButNotResumable) {
  const std::vector<std::string> o = {"train.save_every=2", "train.max_steps=4", "train.micro_batch_size=4",
                                      "train.keep_last=5"};
  std::vector<std::string> w = o;
  w.push_back("train.intermediate_checkpoints=weights");
  {
    Trainer t(config("full", o));
    t.run();
  }
  {
    Trainer t(config("w", w));
    const TrainResult r = t.run();
    EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "optimizer.pt")) << "the final checkpoint is full";
    EXPECT_FALSE(checkpoint::load_trainer_state(r.last_checkpoint).weights_only);
  }
  const fs::path full2 = dir_ / "full/checkpoints/step_00000002", w2 = dir_ / "w/checkpoints/step_00000002";
  EXPECT_TRUE(checkpoint::load_trainer_state(w2.string()).weights_only);
  EXPECT_FALSE(fs::exists(w2 / "optimizer.pt"));
  EXPECT_TRUE(fs::exists(w2 / "tokenizer.json"));
  EXPECT_EQ(read_file((w2 / "model.safetensors").string()), read_file((full2 / "model.safetensors").string()));
  EXPECT_EQ(checkpoint::checkpoint_problem(w2.string()), "");  // intact, just not resumable
  // A run killed after step 3 has only the weights-only step 2 to resume from: refused, by name and auto.
  fs::remove_all(dir_ / "w/checkpoints/step_00000004");
  for (const std::string spec : {std::string("auto"), w2.string()}) {
    Trainer t(config("w", w));
    try {
      t.run(spec);
      ADD_FAILURE() << spec << " resumed from a weights-only checkpoint";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(w2.string()), std::string::npos) << e.message();
      EXPECT_NE(e.message().find("weights-only"), std::string::npos) << e.message();
      EXPECT_NE(e.message().find("optimizer state"), std::string::npos) << e.message();
    }
  }
  // Its weights train on in a new run (model.path).
  Trainer t(config("from_w", {"train.max_steps=1", "model.path=" + w2.string()}));
  EXPECT_EQ(t.run().steps, 1);
}

}  // namespace
}  // namespace sftgo::train
