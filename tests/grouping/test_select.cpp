// Top-k selection, registry, the static functions, the cache and Rho-1 selection.
#include <gtest/gtest.h>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "sftgo/core/error.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/grouping/pipeline.h"
#include "sftgo/grouping/rho1.h"
#include "sftgo/grouping/tfidf.h"

namespace sftgo::grouping {
namespace {

using data::kIgnoreLabel;
using data::TokenizedExample;

// An example whose first `prompt` tokens are untrained.
TokenizedExample make_example(std::vector<int32_t> ids, size_t prompt, int64_t index = 0) {
  TokenizedExample ex;
  ex.ids = std::move(ids);
  ex.labels = ex.ids;
  for (size_t t = 0; t < prompt && t < ex.labels.size(); ++t) ex.labels[t] = kIgnoreLabel;
  ex.index = index;
  return ex;
}

// POSIX on purpose: libtorch.so (2.11 wheel) exports a broken std::filesystem::remove_all that
// segfaults in binaries linking it.
void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::string temp_dir(const std::string& tag) {
  const char* tmp = std::getenv("TMPDIR");
  std::string p = std::string(tmp ? tmp : "/tmp") + "/sftgo_grouping_" + tag + "_" + std::to_string(::getpid());
  remove_tree(p);
  ::mkdir(p.c_str(), 0755);
  return p;
}

TEST(Select, CountRule) {
  EXPECT_EQ(num_important(10, 30), 3);
  EXPECT_EQ(num_important(7, 30), 3);  // 2.1 -> ceil
  EXPECT_EQ(num_important(1, 1), 1);
  EXPECT_EQ(num_important(5, 0), 0);
  EXPECT_EQ(num_important(5, 100), 5);
  EXPECT_EQ(num_important(0, 50), 0);
  EXPECT_THROW(num_important(5, 101), Error);
  EXPECT_THROW(num_important(5, -1), Error);
}

TEST(Select, TopKWithTiesByEarlierPosition) {
  std::vector<float> s = {9, 1, 5, 5, 5, 0, 7};
  std::vector<uint8_t> m = {0, 1, 1, 1, 1, 1, 1};  // position 0 untrained despite the top score
  // 6 trained, 50% -> 3: 7 (pos 6), then the tie at 5 keeps positions 2 and 3.
  EXPECT_EQ(select_top_k(s, m, 50), (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, 1}));
  EXPECT_EQ(select_top_k(s, m, 0), (std::vector<uint8_t>(7, 0)));
  EXPECT_EQ(select_top_k(s, m, 100), (std::vector<uint8_t>{0, 1, 1, 1, 1, 1, 1}));
}

TEST(Select, NaNRanksLast) {
  std::vector<float> s = {NAN, 1, NAN, -INFINITY};
  std::vector<uint8_t> m = {1, 1, 1, 1};
  EXPECT_EQ(select_top_k(s, m, 50), (std::vector<uint8_t>{0, 1, 0, 1}));
  EXPECT_EQ(select_top_k(s, m, 75), (std::vector<uint8_t>{1, 1, 0, 1}));
}

TEST(Select, BatchTiesByEarlierSequence) {
  std::vector<float> a = {3, 2}, b = {}, c = {3, 2, 1};
  std::vector<uint8_t> ma = {1, 1}, mb = {}, mc = {1, 1, 1};
  auto out = select_top_k_batch({a, b, c}, {ma, mb, mc}, 40);  // 5 trained -> 2
  EXPECT_EQ(out[0], (std::vector<uint8_t>{1, 0}));
  EXPECT_TRUE(out[1].empty());
  EXPECT_EQ(out[2], (std::vector<uint8_t>{1, 0, 0}));
}

TEST(Registry, BuiltinsAndUnknownName) {
  auto names = grouping_function_names();
  for (const char* n : {"none", "random", "frequency", "tfidf", "llmlingua2", "rho1"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  GroupingOptions o;
  o.function = "tfdif";
  try {
    make_grouping_function(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    const std::string what = e.what();
    EXPECT_NE(what.find("did you mean 'tfidf'"), std::string::npos) << what;
    EXPECT_NE(what.find("frequency"), std::string::npos) << what;
  }
}

TEST(Registry, RuntimeRegistration) {
  class Last final : public StaticGroupingFunction {
   public:
    std::string name() const override { return "test_last"; }
    Requirements requirements() const override { return {}; }
    std::string params() const override { return ""; }
    std::vector<float> score(const TokenizedExample& ex) const override {
      std::vector<float> s(ex.ids.size());
      for (size_t t = 0; t < s.size(); ++t) s[t] = static_cast<float>(t);
      return s;
    }
  };
  register_grouping_function("test_last",
                             [](const GroupingOptions&, const Tokenizer*) { return std::make_unique<Last>(); });
  EXPECT_THROW(register_grouping_function(
                   "test_last", [](const GroupingOptions&, const Tokenizer*) { return std::make_unique<Last>(); }),
               Error);
  GroupingOptions o;
  o.function = "test_last";
  o.top_k_percent = 50;
  auto out = compute_groups({make_example({5, 6, 7, 8, 9}, 1)}, o);
  EXPECT_EQ(out.groups[0], (std::vector<uint8_t>{0, 0, 0, 1, 1}));
}

TEST(Functions, NoneMarksNothing) {
  GroupingOptions o;
  o.function = "none";
  auto out = compute_groups({make_example({1, 2, 3}, 1)}, o);
  EXPECT_EQ(out.groups[0], (std::vector<uint8_t>{0, 0, 0}));
}

TEST(Functions, RandomIsSeededAndOrderFree) {
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < 50; ++i) ex.push_back(make_example(std::vector<int32_t>(40, 7), 5, i));
  GroupingOptions o;
  o.function = "random";
  o.seed = 3;
  o.num_threads = 1;
  auto a = compute_groups(ex, o);
  o.num_threads = 4;
  auto b = compute_groups(ex, o);
  EXPECT_EQ(a.groups, b.groups);
  o.seed = 4;
  auto c = compute_groups(ex, o);
  EXPECT_NE(a.groups, c.groups);
  auto share = group_share(ex, a.groups);
  EXPECT_EQ(share.important_tokens, 50 * 11);  // ceil(0.3 * 35)
  EXPECT_NEAR(share.mean_per_sequence, 11.0 / 35.0, 1e-12);
}

TEST(Functions, FrequencyPrefersRareTokens) {
  std::vector<TokenizedExample> ex = {make_example({1, 1, 1, 2, 3}, 0, 0), make_example({1, 1, 2, 9}, 1, 1)};
  GroupingOptions o;
  o.function = "frequency";
  o.top_k_percent = 34;  // 5 trained -> 2, 3 trained -> 2
  auto out = compute_groups(ex, o);
  // counts over trained tokens: 1 x4, 2 x2, 3 x1 (the untrained 1 of example 1 does not count).
  EXPECT_EQ(out.groups[0], (std::vector<uint8_t>{0, 0, 0, 1, 1}));
  EXPECT_EQ(out.groups[1], (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_NEAR(out.scores[0][4], -std::log(1.0 / 8.0), 1e-6);
}

TEST(Functions, TfidfMatchesHandComputation) {
  // Two documents over trained tokens: d0 = {5, 5, 6}, d1 = {6, 7}; n = 2.
  std::vector<TokenizedExample> ex = {make_example({1, 5, 5, 6}, 1, 0), make_example({7, 6}, 0, 1)};
  GroupingOptions o;
  o.function = "tfidf";
  o.top_k_percent = 34;
  auto out = compute_groups(ex, o);
  const double idf5 = std::log(3.0 / 2.0) + 1, idf6 = 1.0;
  const double w5 = 2 * idf5, w6 = idf6, norm = std::sqrt(w5 * w5 + w6 * w6);
  EXPECT_NEAR(out.scores[0][1], w5 / norm, 1e-6);
  EXPECT_NEAR(out.scores[0][3], w6 / norm, 1e-6);
  EXPECT_EQ(out.scores[0][0], 0.0f);
  EXPECT_EQ(out.groups[0], (std::vector<uint8_t>{0, 1, 1, 0}));  // 3 trained -> ceil(1.02) = 2
}

TEST(Tfidf, SublinearAndNonSmooth) {
  TfidfModel m({.smooth_idf = false, .sublinear_tf = true, .l2_norm = false});
  std::vector<int32_t> d0 = {1, 1, 1, 2}, d1 = {2, 3};
  m.fit({d0, d1});
  EXPECT_NEAR(m.idf(1), std::log(2.0) + 1, 1e-12);
  EXPECT_NEAR(m.idf(2), 1.0, 1e-12);
  auto w = m.document_weights(d0);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_NEAR(w[0].second, (1 + std::log(3.0)) * (std::log(2.0) + 1), 1e-12);
  EXPECT_NEAR(w[1].second, 1.0, 1e-12);
}

TEST(Cache, RoundTripAndCorruption) {
  const auto dir = temp_dir("cache");
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < 20; ++i) ex.push_back(make_example({1, 2, 3, 4, i + 5, i + 6}, 2, i));
  GroupingOptions o;
  o.function = "tfidf";
  o.cache_dir = dir;
  o.dataset_fingerprint = "ds-1";
  auto first = compute_groups(ex, o);
  EXPECT_FALSE(first.from_cache);
  ASSERT_FALSE(first.cache_path.empty());
  auto second = compute_groups(ex, o);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(first.groups, second.groups);
  EXPECT_EQ(first.scores, second.scores);

  // Another k is another key.
  o.top_k_percent = 50;
  EXPECT_FALSE(compute_groups(ex, o).from_cache);
  o.top_k_percent = 30;

  // Flip one payload byte: checksum mismatch -> recomputed, same result.
  {
    std::fstream f(first.cache_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  auto third = compute_groups(ex, o);
  EXPECT_FALSE(third.from_cache);
  EXPECT_EQ(third.groups, first.groups);
  EXPECT_TRUE(compute_groups(ex, o).from_cache);  // rewritten

  // Truncated file.
  ASSERT_EQ(::truncate(first.cache_path.c_str(), 30), 0);
  EXPECT_FALSE(compute_groups(ex, o).from_cache);

  // Same key but different example lengths (a caller bug) is rejected, not trusted.
  auto key = grouping_cache_key("ds-1", "tfidf", "smooth_idf=1;sublinear_tf=0;l2_norm=1", 30);
  ex[3].ids.push_back(1);
  ex[3].labels.push_back(1);
  EXPECT_FALSE(load_grouping_cache(first.cache_path, key, ex).has_value());
  remove_tree(dir);
}

// Data parallel: tests/grouping/test_shard.cpp.

TEST(Cache, NonStaticFunctionIsRejected) {
  GroupingOptions o;
  o.function = "rho1";
  EXPECT_THROW(compute_groups({make_example({1, 2}, 0)}, o), Error);
}

TEST(Rho1, SequenceAndBatchSelection) {
  // [B=2, S=4], excess = cur - ref.
  std::vector<float> cur = {3, 1, 2, 5, /**/ 4, 4, 0, 9};
  std::vector<float> ref = {1, 0, 0, 5, /**/ 0, 0, 0, 0};
  std::vector<uint8_t> tr = {1, 1, 1, 1, /**/ 1, 1, 1, 0};
  // excess row 0: 2, 1, 2, 0; row 1: 4, 4, 0, (untrained 9).
  auto seq = select_rho1(cur, ref, tr, 2, 4, 50, Selection::kSequence);
  EXPECT_EQ(seq, (std::vector<uint8_t>{1, 0, 1, 0, /**/ 1, 1, 0, 0}));
  auto bat = select_rho1(cur, ref, tr, 2, 4, 50, Selection::kBatch);  // 7 trained -> 4
  EXPECT_EQ(bat, (std::vector<uint8_t>{1, 0, 1, 0, /**/ 1, 1, 0, 0}));
  auto bat2 = select_rho1(cur, ref, tr, 2, 4, 29, Selection::kBatch);  // 7 -> ceil(2.03) = 3
  EXPECT_EQ(bat2, (std::vector<uint8_t>{1, 0, 0, 0, /**/ 1, 1, 0, 0}));
  EXPECT_THROW(select_rho1(cur, ref, tr, 2, 3, 50, Selection::kBatch), Error);
  EXPECT_THROW(parse_selection("token"), Error);
}

}  // namespace
}  // namespace sftgo::grouping
