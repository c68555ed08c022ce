// `llmlingua2`: LLMLingua-2 keep probabilities of the response words, mapped onto Llama tokens.
// This file is the LibTorch-free part (see llmlingua2.h); the classifier is llmlingua2_torch.cpp.
#include "sftgo/grouping/llmlingua2.h"

#include <dlfcn.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <numeric>

#include <nlohmann/json.hpp>

#include "builtin.h"
#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::grouping {
namespace {

namespace fs = std::filesystem;

// A piece of Python's string.punctuation: llmlingua tests `token in string.punctuation`, a substring
// test, so "." and "()" start a new word but ".," does not.
bool is_punctuation_substring(std::string_view token) {
  static constexpr std::string_view kPunctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  return !token.empty() && kPunctuation.find(token) != std::string_view::npos;
}

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, sentencepiece's word-start mark

bool starts_with_mark(std::string_view s) { return s.substr(0, kSpaceMark.size()) == kSpaceMark; }

// Python's str.lstrip("▁").
std::string_view lstrip_mark(std::string_view s) {
  while (starts_with_mark(s)) s.remove_prefix(kSpaceMark.size());
  return s;
}

bool is_space_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// libsentencepiece and LibTorch's libc10 both export FLAGS_minloglevel (see src/grouping/CMakeLists.txt).
// When the process-wide definition is not sentencepiece's, its static constructor has already
// written over libc10's memory: refuse to go on rather than hang or crash later.
void check_sentencepiece_symbols() {
  static const std::string problem = [] {
    void* sym = dlsym(RTLD_DEFAULT, "FLAGS_minloglevel");
    Dl_info info{};
    if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return std::string();
    const std::string lib = info.dli_fname;
    if (lib.find("sentencepiece") != std::string::npos) return std::string();
    // Only a clash when sentencepiece is loaded and its flag lost to another library's.
    void* handle = dlopen("libsentencepiece.so.0", RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) return std::string();
    dlclose(handle);
    return lib;
  }();
  SFTGO_CHECK_HINT(problem.empty(), ErrorKind::kInternal,
                   "link libsentencepiece before LibTorch (src/grouping/CMakeLists.txt does this for sftgo targets)",
                   "FLAGS_minloglevel of this process resolves to ", problem,
                   ", not to libsentencepiece: the two libraries' flags overlap and sentencepiece has corrupted it");
}

}  // namespace

// ---- meta ---------------------------------------------------------------------------------------------

Llmlingua2Meta load_llmlingua2_meta(const std::string& dir) {
  SFTGO_CHECK_HINT(!dir.empty(), ErrorKind::kConfig, "export one with scripts/export_llmlingua2.py",
                   "grouping.llmlingua2_model is not set");
  SFTGO_CHECK_HINT(fs::is_directory(dir), ErrorKind::kIo, "export one with scripts/export_llmlingua2.py",
                   "LLMLingua-2 model directory ", dir, " does not exist");
  const std::string path = (fs::path(dir) / kLlmlingua2Meta).string();
  for (const char* f : {kLlmlingua2Meta, kLlmlingua2Module, kLlmlingua2Spm})
    SFTGO_CHECK_HINT(fs::is_regular_file(fs::path(dir) / f), ErrorKind::kIo,
                     "re-run scripts/export_llmlingua2.py into this directory", "LLMLingua-2 export ", dir, " has no ",
                     f);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, path, ": not valid JSON: ", e.what());
  }
  SFTGO_CHECK(j.is_object(), ErrorKind::kConfig, path, ": expected a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    SFTGO_CHECK(j.contains(key), ErrorKind::kConfig, path, ": missing \"", key, "\"");
    return j.at(key);
  };
  auto int_field = [&](const char* key, int64_t lo, int64_t hi) {
    const auto& v = field(key);
    SFTGO_CHECK(v.is_number_integer(), ErrorKind::kConfig, path, ": \"", key, "\" must be an integer");
    const auto x = v.get<int64_t>();
    SFTGO_CHECK(x >= lo && x <= hi, ErrorKind::kConfig, path, ": \"", key, "\" = ", x, ", expected ", lo, "..", hi);
    return x;
  };
  auto str_field = [&](const char* key) {
    const auto& v = field(key);
    SFTGO_CHECK(v.is_string(), ErrorKind::kConfig, path, ": \"", key, "\" must be a string");
    return v.get<std::string>();
  };
  Llmlingua2Meta m;
  m.dir = dir;
  const auto format = str_field("format");
  SFTGO_CHECK_HINT(format == kLlmlingua2Format, ErrorKind::kConfig, "re-export with scripts/export_llmlingua2.py", path,
                   ": format \"", format, "\", expected \"", kLlmlingua2Format, "\"");
  SFTGO_CHECK(str_field("output") == "logits", ErrorKind::kConfig, path, ": \"output\" must be \"logits\"");
  m.model_name = str_field("model_name");
  m.window = int_field("window", 3, 1 << 20);
  m.label_index = int_field("label_index", 0, 1);
  // The XLM-R id layout is fixed; an export that says otherwise is not one we can tokenize for.
  SFTGO_CHECK(int_field("bos_id", 0, 0) == kXlmrBos && int_field("pad_id", 1, 1) == kXlmrPad &&
                  int_field("eos_id", 2, 2) == kXlmrEos && int_field("unk_id", 3, 3) == kXlmrUnk &&
                  int_field("piece_offset", 1, 1) == kXlmrPieceOffset,
              ErrorKind::kConfig, path, ": not the XLM-R id layout");
  m.vocab_size = int_field("vocab_size", 5, int64_t{1} << 31);
  m.sentencepiece_pieces = int_field("sentencepiece_pieces", 4, int64_t{1} << 31);
  m.sentencepiece_sha256 = str_field("sentencepiece_sha256");
  SFTGO_CHECK(m.sentencepiece_pieces + kXlmrPieceOffset <= m.vocab_size, ErrorKind::kConfig, path, ": ",
              m.sentencepiece_pieces, " sentencepiece pieces need a vocabulary of at least ",
              m.sentencepiece_pieces + kXlmrPieceOffset, ", the model has ", m.vocab_size);
  return m;
}

// ---- XLM-R tokenizer ----------------------------------------------------------------------------------

XlmrTokenizer::XlmrTokenizer(const std::string& model_path)
    : path_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  check_sentencepiece_symbols();
  SFTGO_CHECK(fs::is_regular_file(model_path), ErrorKind::kIo, "sentencepiece model ", model_path, " does not exist");
  const auto status = sp_->Load(model_path);
  SFTGO_CHECK(status.ok(), ErrorKind::kConfig, model_path, ": not a sentencepiece model (", status.ToString(), ")");
  SFTGO_CHECK_HINT(sp_->unk_id() == 0 && sp_->bos_id() == 1 && sp_->eos_id() == 2, ErrorKind::kConfig,
                   "LLMLingua-2 uses XLM-RoBERTa's sentencepiece model", model_path,
                   ": expected the XLM-R layout <unk>=0 <s>=1 </s>=2, got unk ", sp_->unk_id(), " bos ", sp_->bos_id(),
                   " eos ", sp_->eos_id());
}

XlmrTokenizer::~XlmrTokenizer() = default;
XlmrTokenizer::XlmrTokenizer(XlmrTokenizer&&) noexcept = default;

int64_t XlmrTokenizer::piece_count() const { return sp_->GetPieceSize(); }

std::vector<XlmrPiece> XlmrTokenizer::encode(std::string_view text) const {
  sentencepiece::ImmutableSentencePieceText spt;
  const auto status = sp_->Encode(text, spt.mutable_proto());
  SFTGO_CHECK(status.ok(), ErrorKind::kData, "sentencepiece could not encode a text of ", text.size(),
              " bytes: ", status.ToString());
  std::vector<XlmrPiece> out;
  out.reserve(spt.pieces_size());
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    const auto p = spt.pieces(static_cast<int>(i));
    XlmrPiece x;
    const auto sp_id = static_cast<int64_t>(p.id());
    // fairseq's dictionary: <s> <pad> </s> <unk> first, every sentencepiece id shifted by one,
    // sentencepiece's own <unk> (0) becomes 3 (HF XLMRobertaTokenizer._convert_token_to_id).
    x.id = sp_id == 0 ? kXlmrUnk : sp_id + kXlmrPieceOffset;
    x.piece = p.piece();
    x.end = std::min<size_t>(p.end(), text.size());
    // The space a leading ▁ stands for is not part of the word's text.
    x.begin = std::min<size_t>(p.begin(), x.end);
    while (x.begin < x.end && is_space_byte(text[x.begin])) ++x.begin;
    out.push_back(std::move(x));
  }
  return out;
}

// ---- windows and words ----------------------------------------------------------------------------------

std::vector<PieceRange> llmlingua2_windows(const std::vector<XlmrPiece>& pieces, int64_t window) {
  SFTGO_CHECK(window >= 3, ErrorKind::kConfig, "grouping.llmlingua2_window = ", window, ", expected >= 3");
  // __chunk_context: max_len = window - 2 ("leave 2 token for CLS and SEP"); a window that does
  // not reach the end is cut after the last "." (or "\n") piece among pieces[st .. st+max_len].
  const size_t max_len = static_cast<size_t>(window - 2);
  const size_t n = pieces.size();
  std::vector<PieceRange> out;
  size_t st = 0;
  while (st < n) {
    if (st + max_len > n - 1) {
      out.push_back({st, n});
      break;
    }
    size_t ed = st + max_len;
    for (size_t j = 0; j < ed - st; ++j) {
      const auto& p = pieces[ed - j].piece;
      if (pieces[ed - j].id != kXlmrUnk && (p == "." || p == "\n")) {
        ed -= j;
        break;
      }
    }
    out.push_back({st, ed + 1});
    st = ed + 1;
  }
  return out;
}

std::vector<int64_t> llmlingua2_window_ids(const std::vector<XlmrPiece>& pieces, PieceRange r, int64_t window) {
  std::vector<int64_t> ids;
  ids.reserve(r.end - r.begin + 2);
  ids.push_back(kLlmlinguaBoundary);
  for (size_t i = r.begin; i < r.end; ++i) ids.push_back(pieces[i].id);
  ids.push_back(kLlmlinguaBoundary);
  if (static_cast<int64_t>(ids.size()) > window) ids.resize(static_cast<size_t>(window));
  return ids;
}

std::vector<Llmlingua2Word> merge_pieces_to_words(const std::vector<XlmrPiece>& pieces,
                                                  std::span<const float> piece_probs) {
  SFTGO_CHECK(piece_probs.size() == pieces.size(), ErrorKind::kInternal, "merge_pieces_to_words: ", piece_probs.size(),
              " probabilities for ", pieces.size(), " pieces");
  std::vector<Llmlingua2Word> words;
  std::vector<double> sums;
  std::vector<int64_t> counts;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto& p = pieces[i];
    if (p.id == kXlmrUnk) continue;  // "<unk>" is one of the tokenizer's special tokens: skipped
    const bool begins = starts_with_mark(p.piece) || is_punctuation_substring(p.piece);
    // llmlingua would fail on a continuation piece with no word before it; we start one.
    if (begins || words.empty()) {
      Llmlingua2Word w;
      w.text = std::string(lstrip_mark(p.piece));
      w.begin = p.begin;
      w.end = p.end;
      words.push_back(std::move(w));
      sums.push_back(0);
      counts.push_back(0);
    } else {
      words.back().text += lstrip_mark(p.piece);
      words.back().end = std::max(words.back().end, p.end);
    }
    sums.back() += static_cast<double>(piece_probs[i]);
    counts.back() += 1;
  }
  for (size_t w = 0; w < words.size(); ++w) words[w].prob = sums[w] / static_cast<double>(counts[w]);
  return words;
}

std::vector<float> words_to_token_scores(const std::vector<Llmlingua2Word>& words,
                                         const std::vector<std::pair<size_t, size_t>>& token_spans,
                                         const std::string& aggregation) {
  SFTGO_CHECK_HINT(aggregation == "max" || aggregation == "mean" || aggregation == "first", ErrorKind::kConfig,
                   "use max, mean or first", "unknown grouping.llmlingua2_aggregation '", aggregation, "'");
  std::vector<float> out(token_spans.size(), 0.0f);
  // Words and tokens both run left to right: one merge-like sweep.
  size_t w0 = 0;
  for (size_t t = 0; t < token_spans.size(); ++t) {
    const auto [tb, te] = token_spans[t];
    if (te <= tb) continue;
    while (w0 < words.size() && words[w0].end <= tb) ++w0;
    double best = -1, sum = 0;
    int64_t n = 0;
    for (size_t w = w0; w < words.size() && words[w].begin < te; ++w) {
      if (words[w].end <= tb || words[w].end <= words[w].begin) continue;
      if (aggregation == "first" && n > 0) break;
      best = std::max(best, words[w].prob);
      sum += words[w].prob;
      ++n;
    }
    if (n == 0) continue;
    out[t] = static_cast<float>(aggregation == "mean" ? sum / static_cast<double>(n) : best);
  }
  return out;
}

// ---- options -----------------------------------------------------------------------------------------------

KeepClassifier::~KeepClassifier() = default;

std::vector<OptionSpec> llmlingua2_option_specs() {
  return {
      {"llmlingua2_model", "", "LLMLingua-2 TorchScript export directory (scripts/export_llmlingua2.py)"},
      OptionSpec("llmlingua2_aggregation", "max", "How a Llama token combines the word probabilities it overlaps")
          .one_of({"max", "mean", "first"}),
      OptionSpec("llmlingua2_window", int64_t{512},
                 "LLMLingua-2: classifier window in XLM-R ids incl. <s> and </s> (llmlingua uses 512)")
          .range(3, 1 << 20),
      OptionSpec("llmlingua2_batch_size", int64_t{16},
                 "LLMLingua-2: windows per classifier forward (CPU: 1-4 is fastest, see docs/benchmarks.md; GPU: "
                 "larger)")
          .range(1, 1 << 16),
      OptionSpec("llmlingua2_device", "auto", "LLMLingua-2: where the classifier runs (auto = cuda when available)")
          .one_of({"auto", "cpu", "cuda"}),
  };
}

Llmlingua2Options llmlingua2_options(const OptionValues& p) {
  return {.model = p.get<std::string>("llmlingua2_model"),
          .aggregation = p.get<std::string>("llmlingua2_aggregation"),
          .window = p.get<int64_t>("llmlingua2_window"),
          .batch_size = p.get<int64_t>("llmlingua2_batch_size"),
          .device = p.get<std::string>("llmlingua2_device")};
}

// ---- scorer -------------------------------------------------------------------------------------------------

Llmlingua2Scorer::Llmlingua2Scorer(const Llmlingua2Options& opts, const KeepClassifierMaker& make_classifier)
    : meta_(load_llmlingua2_meta(opts.model)) {
  window_ = opts.window;
  SFTGO_CHECK_HINT(window_ >= 3 && window_ <= meta_.window, ErrorKind::kConfig,
                   sftgo::format("the export {} takes at most {} ids per window", meta_.dir, meta_.window),
                   "grouping.llmlingua2_window = ", window_, ", expected 3..", meta_.window);
  SFTGO_CHECK(opts.batch_size >= 1, ErrorKind::kConfig, "grouping.llmlingua2_batch_size = ", opts.batch_size,
              ", expected >= 1");
  const std::string sp_path = (fs::path(meta_.dir) / kLlmlingua2Spm).string();
  const std::string sha = sha256_file(sp_path);
  SFTGO_CHECK_HINT(sha == meta_.sentencepiece_sha256, ErrorKind::kConfig,
                   "the sentencepiece model does not belong to this export; re-run scripts/export_llmlingua2.py",
                   sp_path, ": sha256 ", sha, " but ", kLlmlingua2Meta, " expects ", meta_.sentencepiece_sha256);
  sp_ = std::make_unique<XlmrTokenizer>(sp_path);
  SFTGO_CHECK(sp_->piece_count() == meta_.sentencepiece_pieces, ErrorKind::kConfig, sp_path, ": ", sp_->piece_count(),
              " pieces but ", kLlmlingua2Meta, " says ", meta_.sentencepiece_pieces);
  SFTGO_CHECK(static_cast<bool>(make_classifier), ErrorKind::kInternal, "LLMLingua-2 scorer without a classifier");
  clf_ = make_classifier(meta_);
  SFTGO_CHECK(clf_ != nullptr, ErrorKind::kInternal, "LLMLingua-2 classifier maker returned null");
}

Llmlingua2Scorer::~Llmlingua2Scorer() = default;

std::string Llmlingua2Scorer::device() const { return clf_->device(); }

std::vector<std::vector<Llmlingua2Word>> Llmlingua2Scorer::words(const std::vector<std::string>& texts) const {
  std::vector<std::vector<XlmrPiece>> pieces(texts.size());
  std::vector<std::vector<int64_t>> windows;
  struct Where {
    size_t text;
    PieceRange range;
  };
  std::vector<Where> where;
  for (size_t t = 0; t < texts.size(); ++t) {
    pieces[t] = sp_->encode(texts[t]);
    for (const auto& r : llmlingua2_windows(pieces[t], window_)) {
      windows.push_back(llmlingua2_window_ids(pieces[t], r, window_));
      where.push_back({t, r});
    }
  }
  const auto probs = windows.empty() ? std::vector<std::vector<float>>{} : clf_->keep_probs(windows);
  SFTGO_CHECK(probs.size() == windows.size(), ErrorKind::kInternal, "classifier returned ", probs.size(),
              " windows for ", windows.size());
  std::vector<std::vector<float>> piece_probs(texts.size());
  for (size_t t = 0; t < texts.size(); ++t) piece_probs[t].assign(pieces[t].size(), std::nanf(""));
  for (size_t w = 0; w < windows.size(); ++w) {
    SFTGO_CHECK(probs[w].size() == windows[w].size(), ErrorKind::kInternal, "classifier returned ", probs[w].size(),
                " probabilities for a window of ", windows[w].size());
    // Position 0 is the opening boundary; piece i of the range sits at 1 + (i - begin) when it fits in the window.
    const auto& [t, r] = where[w];
    for (size_t i = r.begin; i < r.end && 1 + (i - r.begin) < probs[w].size(); ++i)
      piece_probs[t][i] = probs[w][1 + (i - r.begin)];
  }
  std::vector<std::vector<Llmlingua2Word>> out(texts.size());
  for (size_t t = 0; t < texts.size(); ++t) out[t] = merge_pieces_to_words(pieces[t], piece_probs[t]);
  return out;
}

// ---- the grouping function -----------------------------------------------------------------------------------

namespace detail {
namespace {

// One stretch of trained, non-special tokens: its text and each token's byte span in it.
struct Segment {
  std::vector<size_t> positions;
  std::string text;
  std::vector<std::pair<size_t, size_t>> spans;
};

std::vector<Segment> segments_of(const data::TokenizedExample& ex, const Tokenizer& tok) {
  std::vector<Segment> out;
  bool open = false;
  for (size_t t = 0; t < ex.ids.size(); ++t) {
    const bool trained = ex.labels[t] != data::kIgnoreLabel;
    // Special tokens (<|eot_id|>, headers) are not text; they end a segment and score 0.
    if (!trained || tok.is_special(ex.ids[t])) {
      open = false;
      continue;
    }
    if (!open) out.emplace_back();
    open = true;
    auto& s = out.back();
    const std::string bytes = tok.token_bytes(ex.ids[t]);
    s.positions.push_back(t);
    s.spans.emplace_back(s.text.size(), s.text.size() + bytes.size());
    s.text += bytes;
  }
  return out;
}

class Llmlingua2Function final : public StaticGroupingFunction {
 public:
  Llmlingua2Function(const Llmlingua2Options& opts, const Tokenizer& tok, const KeepClassifierMaker& make)
      : opts_(opts), tok_(tok), scorer_(opts, make) {
    (void)words_to_token_scores({}, {}, opts.aggregation);  // validates the name now
    // The cache key must change with the weights: hash the TorchScript file once.
    const std::string module = (fs::path(scorer_.meta().dir) / kLlmlingua2Module).string();
    const std::string bytes = read_file(module);
    module_hash_ = hash64(bytes.data(), bytes.size());
    log_info("grouping: llmlingua2 model {} ({}), window {}, batch {}, device {}", scorer_.meta().dir,
             scorer_.meta().model_name, scorer_.window(), opts.batch_size, scorer_.device());
  }

  std::string name() const override { return "llmlingua2"; }
  Requirements requirements() const override { return {.reference_model = true, .tokenizer = true}; }
  std::string params() const override {
    return sftgo::format("model={:016x};sp={};window={};aggregation={};text=v1", module_hash_,
                         scorer_.meta().sentencepiece_sha256, scorer_.window(), opts_.aggregation);
  }

  // Windows of neighbouring examples share classifier batches, so the pipeline calls score_many on
  // fixed runs of examples of batch_size x window tokens (one batch of full windows, several of the
  // usual short ones, sorted longest first inside the run).
  uint64_t score_run_tokens() const override {
    return static_cast<uint64_t>(opts_.batch_size) * static_cast<uint64_t>(scorer_.window());
  }

  // All windows of all the examples go through the classifier in batches (Llmlingua2Scorer::words).
  std::vector<std::vector<float>> score_many(std::span<const data::TokenizedExample> examples,
                                             int /*threads*/) const override {
    std::vector<std::vector<Segment>> segs(examples.size());
    std::vector<std::string> texts;
    for (size_t i = 0; i < examples.size(); ++i) {
      segs[i] = segments_of(examples[i], tok_);
      for (const auto& s : segs[i]) texts.push_back(s.text);
    }
    const auto words = scorer_.words(texts);
    std::vector<std::vector<float>> out(examples.size());
    size_t k = 0;
    for (size_t i = 0; i < examples.size(); ++i) {
      out[i] = scores_from(examples[i], segs[i], words, k);
      k += segs[i].size();
    }
    return out;
  }

  std::vector<float> score(const data::TokenizedExample& ex) const override {
    return std::move(score_many(std::span<const data::TokenizedExample>(&ex, 1), 1)[0]);
  }

 private:
  std::vector<float> scores_from(const data::TokenizedExample& ex, const std::vector<Segment>& segs,
                                 const std::vector<std::vector<Llmlingua2Word>>& words, size_t first) const {
    std::vector<float> out(ex.ids.size(), 0.0f);
    for (size_t s = 0; s < segs.size(); ++s) {
      const auto tok_scores = words_to_token_scores(words[first + s], segs[s].spans, opts_.aggregation);
      for (size_t j = 0; j < segs[s].positions.size(); ++j) out[segs[s].positions[j]] = tok_scores[j];
    }
    return out;
  }

  Llmlingua2Options opts_;
  const Tokenizer& tok_;
  Llmlingua2Scorer scorer_;
  uint64_t module_hash_ = 0;
};

}  // namespace

}  // namespace detail

std::unique_ptr<GroupingFunction> make_llmlingua2_function(const GroupingOptions& opts, const Tokenizer* tok,
                                                           const KeepClassifierMaker& make_classifier) {
  SFTGO_CHECK_HINT(tok != nullptr, ErrorKind::kUsage, "pass the Llama tokenizer to make_grouping_function",
                   "grouping function 'llmlingua2' needs the tokenizer (it scores the response text)");
  return std::make_unique<detail::Llmlingua2Function>(llmlingua2_options(opts.params), *tok, make_classifier);
}

}  // namespace sftgo::grouping
