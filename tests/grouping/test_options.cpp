// Grouping functions own their config keys: the built-ins' keys load as they always did (flat
// grouping.<key>), the reference documents them, and a function defined here, in the test, with an
// option of its own plugs into the config, the pipeline and the trainer without touching any of them.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "../../src/grouping/builtin.h"
#include "../common/temp_dir.h"
#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/strings.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/train/options.h"
#include "sftgo/train/trainer.h"

namespace sftgo::grouping {
namespace {

namespace fs = std::filesystem;
using test_util::TempDir;

template <typename Fn>
std::string error_text(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a config error";
  return "";
}

// docs/config.md is generated from the config module's keys and each grouping function's own; this
// keeps it true.
TEST(GroupingOptions, ReferenceDocIsUpToDate) {
  const std::string path = std::string(SFTGO_SOURCE_DIR) + "/docs/config.md";
  ASSERT_TRUE(fs::exists(path)) << path;
  EXPECT_EQ(read_file(path), config_reference_markdown())
      << "regenerate with: build/bin/sftgo-train config --reference > docs/config.md";
}

// Every shipped config must load: a typo in configs/ is caught here, not on a GPU node.
TEST(GroupingOptions, ShippedConfigsLoad) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(SFTGO_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    EXPECT_NO_THROW(load_config(e.path().string()));
    EXPECT_TRUE(starts_with(read_file(e.path().string()).substr(0, 64), "# Run: "))
        << "configs start with the command that runs them";
    ++n;
  }
  EXPECT_GT(n, 0);
}

// The flat keys users write reach the function as its params, and the params() text that the cache
// key hashes is what it was before the options moved into the functions (existing caches stay valid).
TEST(GroupingOptions, BuiltinKeysReachTheirFunctionAndKeepTheCacheIdentity) {
  for (const auto& spec : {detail::tfidf_function(), detail::llmlingua2_function(), detail::rho1_function()})
    for (const auto& o : spec.options) {
      const auto keys = config_keys();
      EXPECT_NE(std::find(keys.begin(), keys.end(), "grouping." + o.key), keys.end()) << o.key;
    }
  const LoadedConfig c =
      load_config_text("grouping:\n  tfidf_sublinear_tf: true\n  rho1_reference_model: /ref\n", "g.yaml");
  const GroupingOptions g = train::grouping_options(c.config);
  EXPECT_TRUE(g.params.get<bool>("tfidf_sublinear_tf"));
  EXPECT_EQ(g.params.get<std::string>("rho1_reference_model"), "/ref");
  EXPECT_EQ(make_grouping_function(g)->params(), "smooth_idf=1;sublinear_tf=1;l2_norm=1");
  GroupingOptions defaults;  // built in code: make_grouping_function fills in the declared defaults
  EXPECT_EQ(make_grouping_function(defaults)->params(), "smooth_idf=1;sublinear_tf=0;l2_norm=1");
  defaults.function = "random";
  defaults.seed = 7;
  EXPECT_EQ(make_grouping_function(defaults)->params(), "seed=7");
  // Values given in code are checked against the declaration as YAML values are.
  GroupingOptions bad;
  bad.params.set("tfidf_sublinear_tf", int64_t{1});
  EXPECT_NE(error_text([&] { make_grouping_function(bad); }).find("grouping.tfidf_sublinear_tf: expected a bool"),
            std::string::npos);
}

// ---- A toy function, defined only here --------------------------------------------------------------
// Scores 1 at every toy_stride-th trained token (from toy_stride_phase), 0 elsewhere.
std::atomic<int> g_toy_scored{0};

class StrideFunction final : public StaticGroupingFunction {
 public:
  StrideFunction(int64_t stride, int64_t phase) : stride_(stride), phase_(phase) {}
  std::string name() const override { return "toy_stride"; }
  Requirements requirements() const override { return {}; }
  std::string params() const override { return sftgo::format("stride={};phase={}", stride_, phase_); }
  std::vector<float> score(const data::TokenizedExample& ex) const override {
    ++g_toy_scored;
    std::vector<float> s(ex.ids.size(), 0.0f);
    int64_t n = 0;
    for (size_t t = 0; t < s.size(); ++t)
      if (ex.labels[t] != data::kIgnoreLabel) s[t] = (n++ % stride_) == phase_ ? 1.0f : 0.0f;
    return s;
  }

 private:
  int64_t stride_, phase_;
};

void register_toy_once() {
  static const bool done = [] {
    register_grouping_function(
        {"toy_stride",
         {OptionSpec("toy_stride", int64_t{2}, "Toy: every n-th trained token is important").range(1, 64),
          OptionSpec("toy_stride_phase", int64_t{0}, "Toy: the first important one").range(0, 63)},
         [](const GroupingOptions& o, const Tokenizer*) {
           const auto stride = o.params.get<int64_t>("toy_stride"), phase = o.params.get<int64_t>("toy_stride_phase");
           // A check across the function's own keys, in its own code.
           SFTGO_CHECK(phase < stride, ErrorKind::kConfig, "grouping.toy_stride_phase (", phase,
                       ") must be below grouping.toy_stride (", stride, ")");
           return std::make_unique<StrideFunction>(stride, phase);
         }});
    return true;
  }();
  ASSERT_TRUE(done);
}

std::vector<data::TokenizedExample> toy_examples() {
  std::vector<data::TokenizedExample> out;
  for (int i = 0; i < 3; ++i) {
    data::TokenizedExample ex;
    ex.index = i;
    for (int t = 0; t < 12 + i; ++t) {
      ex.ids.push_back(5 + t);
      ex.labels.push_back(t < 2 ? data::kIgnoreLabel : 5 + t);  // two prompt tokens
    }
    out.push_back(std::move(ex));
  }
  return out;
}

TEST(GroupingOptions, ToyFunctionOwnsItsKeysAndRunsThroughThePipeline) {
  register_toy_once();
  // Its keys are config keys now: loaded, range-checked by the declaration, documented.
  const LoadedConfig c = load_config_text("grouping:\n  function: toy_stride\n  toy_stride: 3\n  top_k_percent: 50\n",
                                          "toy.yaml", {"data.cache_dir="});
  EXPECT_NE(config_reference_markdown().find("| `grouping.toy_stride` | int | `2` | [1, 64] |"), std::string::npos);
  EXPECT_NE(error_text([] { load_config_text("grouping:\n  toy_stride: 0\n", "toy.yaml"); })
                .find("toy.yaml:2: grouping.toy_stride = 0 is out of range"),
            std::string::npos);
  // ... and its own code checks what the declaration cannot.
  const LoadedConfig bad = load_config("", {"grouping.function=toy_stride", "grouping.toy_stride_phase=5"});
  EXPECT_NE(error_text([&] { make_grouping_function(train::grouping_options(bad.config)); })
                .find("grouping.toy_stride_phase (5) must be below grouping.toy_stride (2)"),
            std::string::npos);

  TempDir cache("toy_cache");
  GroupingOptions g = train::grouping_options(c.config);
  g.cache_dir = cache.path();
  auto examples = toy_examples();
  const int scored = g_toy_scored;
  const GroupingOutput out = apply_grouping(examples, g);
  EXPECT_EQ(g_toy_scored - scored, 3);
  for (const auto& ex : examples) {
    // Trained tokens 0, 3, 6, ... score 1 and are chosen first; ceil(50% of n) in all.
    const int64_t n = static_cast<int64_t>(ex.ids.size()) - 2;
    int64_t important = 0;
    for (size_t t = 2; t < ex.ids.size(); ++t) {
      important += ex.groups[t];
      if ((t - 2) % 3 == 0) {
        EXPECT_EQ(ex.groups[t], kGroupImportant) << t;
      }
    }
    EXPECT_EQ(important, num_important(n, 50));
    EXPECT_EQ(ex.groups[0] + ex.groups[1], 0);
  }
  // Cached under its own name and params: a second run loads, another stride is another entry.
  EXPECT_TRUE(fs::exists(out.cache_path)) << out.cache_path;
  EXPECT_NE(out.cache_path.find("groups-toy_stride-"), std::string::npos);
  EXPECT_TRUE(compute_groups(examples, g).from_cache);
  g.params.set("toy_stride", int64_t{4});
  EXPECT_NE(compute_groups(examples, g).cache_path, out.cache_path);
}

// The trainer makes and drives it like a built-in, from the config alone.
TEST(GroupingOptions, ToyFunctionTrainsThroughTheTrainer) {
  register_toy_once();
  TempDir dir("toy_train");
  {
    std::ifstream in(std::string(SFTGO_SOURCE_DIR) + "/data/demo/demo_sft.jsonl");
    std::ofstream out(dir.path() + "/train.jsonl");
    std::string line;
    for (int i = 0; i < 16 && std::getline(in, line); ++i) out << line << "\n";
  }
  const std::string demo = std::string(SFTGO_SOURCE_DIR) + "/data/demo";
  const LoadedConfig c = load_config_text(
      "grouping:\n  function: toy_stride\n  toy_stride: 4\n  toy_stride_phase: 1\n", "toy.yaml",
      {"run.output_dir=" + dir.path() + "/run", "tokenizer.path=" + demo + "/tokenizer",
       "data.path=" + dir.path() + "/train.jsonl", "data.cache_dir=", "data.max_seq_len=128", "model.preset=tiny",
       "model.vocab_size=1408", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
       "model.num_heads=4", "model.num_kv_heads=2", "model.device=cpu", "train.global_batch_size=8",
       "train.micro_batch_size=8", "train.max_steps=2", "train.num_threads=1", "train.save_final=false"});
  const int scored = g_toy_scored;
  std::vector<train::StepMetrics> steps;
  train::TrainerHooks hooks;
  hooks.on_step = [&](const train::StepMetrics& m) {
    steps.push_back(m);
    return true;
  };
  train::Trainer t(c, hooks);
  t.run();
  EXPECT_EQ(g_toy_scored - scored, 16);  // every training example, once, at set-up
  ASSERT_EQ(steps.size(), 2u);
  for (const auto& m : steps) {
    EXPECT_TRUE(std::isfinite(m.loss));
    EXPECT_GT(m.count_imp, 0);
    EXPECT_GT(m.count_unimp, m.count_imp);  // 30% important
  }
}

}  // namespace
}  // namespace sftgo::grouping
