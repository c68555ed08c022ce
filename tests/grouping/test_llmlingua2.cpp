// LLMLingua-2 grouping: checksum, windows, piece -> word merge, word -> token spans, and the export
// checks (missing files, wrong JSON, sentencepiece mismatch, wrong TorchScript signature or output).
// Parity with the llmlingua package itself is tests/python/test_grouping_llmlingua2.py.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "../common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/grouping/llmlingua2.h"
#include "sftgo/grouping/llmlingua2_torch.h"

namespace sftgo::grouping {
namespace {

namespace fs = std::filesystem;
using test_util::TempDir;

// Runs fn and returns the sftgo::Error message it throws ("" when it does not throw).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

XlmrPiece piece(int64_t id, const std::string& text, size_t begin, size_t end) {
  return {.id = id, .piece = text, .begin = begin, .end = end};
}

TEST(Llmlingua2, MergePiecesAsLlmlingua) {
  // "▁Hel lo , ▁wor ld <unk> () ., ▁x": "," and "()" are substrings of string.punctuation and start
  // words; ".," is not and continues; <unk> is skipped.
  std::vector<XlmrPiece> p = {piece(10, "\xe2\x96\x81Hel", 0, 3),
                              piece(11, "lo", 3, 5),
                              piece(12, ",", 5, 6),
                              piece(13, "\xe2\x96\x81wor", 7, 10),
                              piece(14, "ld", 10, 12),
                              piece(kXlmrUnk, "é", 12, 14),
                              piece(15, "()", 14, 16),
                              piece(16, ".,", 16, 18),
                              piece(17, "\xe2\x96\x81x", 19, 20)};
  std::vector<float> prob = {0.1f, 0.3f, 0.5f, 0.2f, 0.4f, 0.99f, 0.6f, 0.8f, 0.7f};
  auto w = merge_pieces_to_words(p, prob);
  ASSERT_EQ(w.size(), 5u);
  EXPECT_EQ(w[0].text, "Hello");
  EXPECT_NEAR(w[0].prob, 0.2, 1e-7);
  EXPECT_EQ(w[1].text, ",");
  EXPECT_EQ(w[2].text, "world");
  EXPECT_NEAR(w[2].prob, 0.3, 1e-7);  // the <unk> probability is not averaged in
  EXPECT_EQ(w[3].text, "().,");
  EXPECT_NEAR(w[3].prob, 0.7, 1e-7);
  EXPECT_EQ(w[4].text, "x");
  EXPECT_EQ(w[2].begin, 7u);
  EXPECT_EQ(w[2].end, 12u);
  // A leading continuation piece starts a word instead of failing as llmlingua would.
  auto lone = merge_pieces_to_words({piece(20, "ab", 0, 2)}, std::vector<float>{0.25f});
  ASSERT_EQ(lone.size(), 1u);
  EXPECT_EQ(lone[0].text, "ab");
  EXPECT_THROW(merge_pieces_to_words(p, std::vector<float>(3)), Error);
}

TEST(Llmlingua2, WindowsCutAfterLastPeriod) {
  // window 6 -> at most 4 pieces before the cut search; the cut keeps the "." inside the window.
  std::vector<XlmrPiece> p;
  const std::vector<std::string> text = {"a", "b", ".", "c", "d", "e", "f", "g", ".", "h", "i"};
  for (size_t i = 0; i < text.size(); ++i) p.push_back(piece(10 + static_cast<int64_t>(i), text[i], i, i + 1));
  auto r = llmlingua2_windows(p, 6);
  // st=0: ed=4, search 4,3,2 -> "." at 2: [0,3). st=3: ed=7, search 7..4: none -> [3,8).
  // st=8: 8+4 > 10 -> [8,11).
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].begin, 0u);
  EXPECT_EQ(r[0].end, 3u);
  EXPECT_EQ(r[1].begin, 3u);
  EXPECT_EQ(r[1].end, 8u);
  EXPECT_EQ(r[2].begin, 8u);
  EXPECT_EQ(r[2].end, 11u);
  // A 5-piece window + 2 boundary ids is 7 ids: truncated to 6 (no closing one), as TokenClfDataset
  // does; the boundaries are <unk> as in llmlingua 0.2.2 (its "[CLS]"/"[SEP]" on an XLM-R tokenizer).
  auto ids = llmlingua2_window_ids(p, r[1], 6);
  EXPECT_EQ(ids, (std::vector<int64_t>{kXlmrUnk, 13, 14, 15, 16, 17}));
  EXPECT_EQ(llmlingua2_window_ids(p, r[0], 6), (std::vector<int64_t>{kXlmrUnk, 10, 11, 12, kXlmrUnk}));
  EXPECT_TRUE(llmlingua2_windows({}, 6).empty());
  EXPECT_THROW(llmlingua2_windows(p, 2), Error);
}

TEST(Llmlingua2, WordsToTokenScores) {
  // Text "ab cd,e": words ab [0,2) 0.2, cd [3,5) 0.6, "," [5,6) 0.4, e [6,7) 0.9.
  std::vector<Llmlingua2Word> w = {{"ab", 0, 2, 0.2}, {"cd", 3, 5, 0.6}, {",", 5, 6, 0.4}, {"e", 6, 7, 0.9}};
  // Llama-like tokens: "a" [0,1), "b c" [1,4), "d,e" [4,7), " " [7,8) (no word), "" [8,8).
  std::vector<std::pair<size_t, size_t>> t = {{0, 1}, {1, 4}, {4, 7}, {7, 8}, {8, 8}};
  auto mx = words_to_token_scores(w, t, "max");
  auto mean = words_to_token_scores(w, t, "mean");
  auto first = words_to_token_scores(w, t, "first");
  EXPECT_FLOAT_EQ(mx[0], 0.2f);
  EXPECT_FLOAT_EQ(mx[1], 0.6f);
  EXPECT_FLOAT_EQ(mx[2], 0.9f);
  EXPECT_FLOAT_EQ(mean[1], 0.4f);
  EXPECT_FLOAT_EQ(mean[2], static_cast<float>((0.6 + 0.4 + 0.9) / 3));
  EXPECT_FLOAT_EQ(first[2], 0.6f);
  for (const auto* v : {&mx, &mean, &first}) {
    EXPECT_EQ((*v)[3], 0.0f);
    EXPECT_EQ((*v)[4], 0.0f);
  }
  EXPECT_NE(error_of([&] { words_to_token_scores(w, t, "median"); }).find("llmlingua2_aggregation"), std::string::npos);
}

// ---- export directory checks ------------------------------------------------------------------------

// Fixtures in tests/grouping/llmlingua2_fixtures/ (made by make_fixtures.py there, not in this
// process: a TorchScript module defined and saved from C++ here deadlocks LibTorch's first run):
//  sp.model: a sentencepiece model in the XLM-R layout (650 bytes), made with the Python package:
//    SentencePieceTrainer.train(sentence_iterator=iter([f"The quick brown fox jumps over the lazy
//      dog. Pack my box with five dozen liquor jugs {i}." for i in range(30)]), vocab_size=60,
//      hard_vocab_limit=False, model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
//      normalization_rule_name="identity")
//  good.pt: keep logit (id % 7) * 0.5 - 1, drop logit 0; the others are broken on purpose.
fs::path fixture(const std::string& name) {
  return fs::path(SFTGO_SOURCE_DIR) / "tests/grouping/llmlingua2_fixtures" / name;
}

void save_module(const std::string& path, const std::string& fixture_name) {
  fs::copy_file(fixture(fixture_name + ".pt"), path, fs::copy_options::overwrite_existing);
}

constexpr const char* kGoodForward = "good";

// Writes a complete export into dir/export and returns its path.
std::string make_export(const TempDir& dir, const std::string& forward = kGoodForward) {
  const fs::path out = fs::path(dir.path()) / "export";
  fs::create_directories(out);
  fs::copy_file(fixture("sp.model"), out / kLlmlingua2Spm, fs::copy_options::overwrite_existing);
  save_module((out / kLlmlingua2Module).string(), forward);
  XlmrTokenizer tok((out / kLlmlingua2Spm).string());
  nlohmann::json meta = {{"format", kLlmlingua2Format},
                         {"model_name", "synthetic"},
                         {"output", "logits"},
                         {"label_index", 1},
                         {"window", 512},
                         {"bos_id", 0},
                         {"pad_id", 1},
                         {"eos_id", 2},
                         {"unk_id", 3},
                         {"piece_offset", 1},
                         {"vocab_size", tok.piece_count() + 2},
                         {"sentencepiece_pieces", tok.piece_count()},
                         {"sentencepiece_sha256", sha256_file((out / kLlmlingua2Spm).string())}};
  std::ofstream((out / kLlmlingua2Meta).string()) << meta.dump(2);
  return out.string();
}

void edit_meta(const std::string& export_dir, const std::function<void(nlohmann::json&)>& edit) {
  const auto path = (fs::path(export_dir) / kLlmlingua2Meta).string();
  nlohmann::json j;
  std::ifstream(path) >> j;
  edit(j);
  std::ofstream(path) << j.dump();
}

Llmlingua2Options opts_for(const std::string& dir, int64_t window = 512) {
  return {.model = dir, .window = window, .batch_size = 2, .device = "cpu"};
}

// The scorer over the TorchScript classifier the grouping function uses.
Llmlingua2Scorer make_scorer(const Llmlingua2Options& o) { return Llmlingua2Scorer(o, lazy_llmlingua2_classifier(o)); }

TEST(Llmlingua2Export, ScoresSyntheticClassifier) {
  TempDir dir("llm2");
  const auto ex = make_export(dir);
  // Short windows so that the texts span several windows and batches.
  auto scorer = make_scorer(opts_for(ex, 8));
  const std::vector<std::string> texts = {"The quick brown fox. Jumps over the lazy dog 12.", "",
                                          "Pack my box with five dozen liquor jugs."};
  const auto words = scorer.words(texts);
  ASSERT_EQ(words.size(), 3u);
  EXPECT_TRUE(words[1].empty());
  for (size_t t = 0; t < texts.size(); ++t) {
    // Recompute from the pieces with the closed-form classifier: every piece is inside a window.
    const auto pieces = scorer.tokenizer().encode(texts[t]);
    std::vector<float> probs;
    for (const auto& p : pieces) {
      const double keep = static_cast<double>(p.id % 7) * 0.5 - 1.0;
      probs.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-keep))));
    }
    const auto want = merge_pieces_to_words(pieces, probs);
    ASSERT_EQ(words[t].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(words[t][i].text, want[i].text);
      EXPECT_NEAR(words[t][i].prob, want[i].prob, 1e-6);  // float softmax vs double logistic
      // Spans point at the word in the text (which may start with <unk> characters the word text skips).
      const auto span = texts[t].substr(words[t][i].begin, words[t][i].end - words[t][i].begin);
      EXPECT_TRUE(span.ends_with(want[i].text)) << span << " vs " << want[i].text;
    }
  }
}

TEST(Llmlingua2Export, MissingFilesAndBadMeta) {
  TempDir dir("llm2");
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for("")); }).find("llmlingua2_model is not set"), std::string::npos);
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(dir.path() + "/nope")); }).find("does not exist"),
            std::string::npos);
  const auto ex = make_export(dir);
  for (const char* f : {kLlmlingua2Meta, kLlmlingua2Module, kLlmlingua2Spm}) {
    TempDir other("llm2m");
    fs::copy(ex, other.path(), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    fs::remove(fs::path(other.path()) / f);
    EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(other.path())); }).find(std::string("has no ") + f),
              std::string::npos);
  }
  edit_meta(ex, [](auto& j) { j["format"] = "something/2"; });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("format"), std::string::npos);
  edit_meta(ex, [](auto& j) {
    j["format"] = kLlmlingua2Format;
    j["label_index"] = 2;
  });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("\"label_index\" = 2"), std::string::npos);
  edit_meta(ex, [](auto& j) {
    j["label_index"] = 1;
    j.erase("window");
  });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("missing \"window\""), std::string::npos);
  edit_meta(ex, [](auto& j) { j["window"] = 64; });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex, 512)); }).find("llmlingua2_window = 512"),
            std::string::npos);
  std::ofstream((fs::path(ex) / kLlmlingua2Meta).string()) << "{not json";
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("not valid JSON"), std::string::npos);
}

TEST(Llmlingua2Export, SentencepieceMismatch) {
  TempDir dir("llm2");
  const auto ex = make_export(dir);
  EXPECT_NO_THROW(auto s = make_scorer(opts_for(ex)));
  // Another sentencepiece model in place of the exported one: the checksum catches it.
  {
    std::ofstream f((fs::path(ex) / kLlmlingua2Spm).string(), std::ios::app | std::ios::binary);
    f << "x";
  }
  const auto msg = error_of([&] { auto s = make_scorer(opts_for(ex)); });
  EXPECT_NE(msg.find("sha256"), std::string::npos) << msg;
  // A matching checksum of a file that is not a sentencepiece model.
  const auto sp = (fs::path(ex) / kLlmlingua2Spm).string();
  std::ofstream(sp, std::ios::binary) << "not a model";
  edit_meta(ex, [&](auto& j) { j["sentencepiece_sha256"] = sha256_file(sp); });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("not a sentencepiece model"), std::string::npos);
}

TEST(Llmlingua2Export, PieceCountMismatch) {
  TempDir dir("llm2");
  const auto ex = make_export(dir);
  edit_meta(ex, [](auto& j) { j["sentencepiece_pieces"] = j["sentencepiece_pieces"].template get<int64_t>() - 1; });
  EXPECT_NE(error_of([&] { auto s = make_scorer(opts_for(ex)); }).find("pieces but"), std::string::npos);
}

TEST(Llmlingua2Export, BadTorchScript) {
  TempDir dir("llm2");
  const auto ex = make_export(dir);
  const auto module = (fs::path(ex) / kLlmlingua2Module).string();
  // The classifier loads lazily (never on a grouping-cache hit), so the first words() call is where a
  // bad module is found and reported.
  auto err = [&] {
    return error_of([&] {
      auto s = make_scorer(opts_for(ex));
      (void)s.words({"a probe text"});
    });
  };

  save_module(module, "wrong_signature");
  EXPECT_NE(err().find("expected (input_ids: Tensor, attention_mask: Tensor)"), std::string::npos) << err();

  save_module(module, "wrong_shape");
  EXPECT_NE(err().find("expected floating logits [2, 4, 2]"), std::string::npos) << err();

  save_module(module, "three_labels");
  EXPECT_NE(err().find("expected floating logits"), std::string::npos) << err();

  // An embedding smaller than the sentencepiece vocabulary fails on the probe batch.
  save_module(module, "small_embedding");
  EXPECT_NE(err().find("probe batch"), std::string::npos) << err();

  std::ofstream(module, std::ios::binary) << "garbage";
  EXPECT_NE(err().find("not a TorchScript module"), std::string::npos) << err();

  save_module(module, kGoodForward);
  auto o = opts_for(ex);
  o.device = "tpu";
  EXPECT_NE(error_of([&] { auto s = make_scorer(o); }).find("device"), std::string::npos);
  o.device = "cpu";
  o.batch_size = 0;
  EXPECT_NE(error_of([&] { auto s = make_scorer(o); }).find("llmlingua2_batch_size"), std::string::npos);
}

}  // namespace
}  // namespace sftgo::grouping
