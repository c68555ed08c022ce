// LLMLingua-2 grouping, the text side (no LibTorch): the XLM-R sentencepiece tokenizer, llmlingua's
// windows and piece -> word merge, and the word -> Llama-token mapping by byte spans. The classifier
// itself (TorchScript) lives in sftgo_grouping (llmlingua2_torch.h), which hands it to the scorer
// (KeepClassifierMaker) and makes the `llmlingua2` grouping function.
//
// Scores follow llmlingua 0.2.2 (PromptCompressor.__get_context_prob with use_llmlingua2=True):
//  * windows: the text's pieces are cut as __chunk_context does (at most window-2 pieces, cut back to
//    the last "." piece); each window is B + pieces + B, truncated to `window` ids, where B is <unk>:
//    llmlingua 0.2.2 builds its TokenClfDataset without the model name, so it adds BERT's "[CLS]" and
//    "[SEP]", which the XLM-R tokenizer maps to <unk> (not <s> and </s> as in LLMLingua-2's training);
//  * keep probability of a piece = softmax(logits)[label_index];
//  * words: special and <unk> pieces are skipped; a piece starting with U+2581 or equal to a substring
//    of Python's string.punctuation starts a new word, any other piece continues the previous one;
//    a word's probability is the mean of its pieces' ("token_to_word=mean").
// One deliberate difference: llmlingua re-tokenizes the text of each window, we feed the window's
// pieces as they are. Both agree unless a window boundary falls inside a word (llmlingua then starts
// a new word; we keep it one word, so that its byte span stays whole).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sftgo/core/hash.h"  // sha256_file: the export's sentencepiece checksum
#include "sftgo/grouping/grouping.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace sftgo::grouping {

// File names inside an export directory (scripts/export_llmlingua2.py).
inline constexpr const char* kLlmlingua2Meta = "llmlingua2.json";
inline constexpr const char* kLlmlingua2Module = "model.pt";
inline constexpr const char* kLlmlingua2Spm = "sentencepiece.bpe.model";
inline constexpr const char* kLlmlingua2Format = "sftgo-llmlingua2/1";

// XLM-R (fairseq) ids: sentencepiece id + kXlmrPieceOffset, except sentencepiece's <unk> (0).
inline constexpr int64_t kXlmrBos = 0;
inline constexpr int64_t kXlmrPad = 1;
inline constexpr int64_t kXlmrEos = 2;
inline constexpr int64_t kXlmrUnk = 3;
inline constexpr int64_t kXlmrPieceOffset = 1;
// What llmlingua 0.2.2 puts around each window (see above).
inline constexpr int64_t kLlmlinguaBoundary = kXlmrUnk;

// llmlingua2.json, validated.
struct Llmlingua2Meta {
  std::string dir;
  std::string model_name;
  int64_t window = 512;     // largest window the model takes (ids incl. <s>/</s>)
  int64_t label_index = 1;  // softmax column of "keep"
  int64_t vocab_size = 0;   // embedding rows: every id we produce must be below this
  int64_t sentencepiece_pieces = 0;
  std::string sentencepiece_sha256;
};
// Reads and checks DIR/llmlingua2.json (format, fields, ranges); kIo when missing, kConfig when wrong.
Llmlingua2Meta load_llmlingua2_meta(const std::string& dir);

struct XlmrPiece {
  int64_t id = 0;     // XLM-R id
  std::string piece;  // the sentencepiece piece ("▁the"); for <unk>, the surface text
  size_t begin = 0;   // byte span in the encoded text, leading whitespace excluded
  size_t end = 0;
};

// The XLM-R tokenizer over a sentencepiece model (the same pieces as HF's XLMRobertaTokenizer).
class XlmrTokenizer {
 public:
  // Throws kIo when the file cannot be read, kConfig when it is not an XLM-R layout model.
  explicit XlmrTokenizer(const std::string& model_path);
  ~XlmrTokenizer();
  XlmrTokenizer(XlmrTokenizer&&) noexcept;
  std::vector<XlmrPiece> encode(std::string_view text) const;  // thread-safe
  int64_t piece_count() const;                                 // sentencepiece pieces
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// [begin, end) piece ranges of __chunk_context with max_len = window - 2.
struct PieceRange {
  size_t begin = 0;
  size_t end = 0;
};
std::vector<PieceRange> llmlingua2_windows(const std::vector<XlmrPiece>& pieces, int64_t window);
// B + ids of pieces[r] + B (B = kLlmlinguaBoundary), truncated to `window` (as TokenClfDataset does).
std::vector<int64_t> llmlingua2_window_ids(const std::vector<XlmrPiece>& pieces, PieceRange r, int64_t window);

struct Llmlingua2Word {
  std::string text;  // as llmlingua's context_words (▁ stripped)
  size_t begin = 0;  // byte span in the text, leading whitespace excluded
  size_t end = 0;
  double prob = 0;  // mean keep probability of its pieces
};
// pieces with their keep probabilities (piece_probs[i] for pieces[i]; NaN for pieces that had no
// window position, which never happens with llmlingua's windows) -> words.
std::vector<Llmlingua2Word> merge_pieces_to_words(const std::vector<XlmrPiece>& pieces,
                                                  std::span<const float> piece_probs);

// Per-token score from the words it overlaps (byte spans in the same text): "max", "mean" or "first"
// (the first word it overlaps). A token that overlaps no word (whitespace, <unk>-only text) scores 0.
// token_spans: [n_tokens] byte ranges [begin, end).
std::vector<float> words_to_token_scores(const std::vector<Llmlingua2Word>& words,
                                         const std::vector<std::pair<size_t, size_t>>& token_spans,
                                         const std::string& aggregation);

// The classifier: per window (XLM-R ids as above), the keep probability of every position.
class KeepClassifier {
 public:
  virtual ~KeepClassifier();
  virtual std::vector<std::vector<float>> keep_probs(const std::vector<std::vector<int64_t>>& windows) const = 0;
  virtual std::string device() const = 0;
};
// The function's own options: grouping.llmlingua2_* (declared by llmlingua2_option_specs()).
struct Llmlingua2Options {
  std::string model;                 // directory written by scripts/export_llmlingua2.py
  std::string aggregation = "max";   // max | mean | first: words -> Llama token
  int64_t window = 512;              // classifier window in XLM-R pieces (incl. <s> and </s>)
  int64_t batch_size = 16;           // classifier windows per forward
  std::string device = "auto";       // auto | cpu | cuda (auto = cuda when available)
};
std::vector<OptionSpec> llmlingua2_option_specs();
// Reads the declared keys from GroupingOptions::params (as make_grouping_function completes them).
Llmlingua2Options llmlingua2_options(const OptionValues& params);

// Makes the classifier of an export directory (meta already validated); llmlingua2_torch.h has the
// TorchScript one, tests may pass a fake.
using KeepClassifierMaker = std::function<std::unique_ptr<KeepClassifier>(const Llmlingua2Meta& meta)>;

// Export directory -> word probabilities of texts (what the parity test compares with llmlingua).
class Llmlingua2Scorer {
 public:
  // Loads and cross-checks meta, sentencepiece model (checksum, piece count, vocab) and classifier.
  Llmlingua2Scorer(const Llmlingua2Options& opts, const KeepClassifierMaker& make_classifier);
  ~Llmlingua2Scorer();
  // Words with probabilities of every text; all windows of all texts go through the classifier in
  // batches (longest first, so padding stays small).
  std::vector<std::vector<Llmlingua2Word>> words(const std::vector<std::string>& texts) const;
  const Llmlingua2Meta& meta() const { return meta_; }
  const XlmrTokenizer& tokenizer() const { return *sp_; }
  int64_t window() const { return window_; }
  std::string device() const;

 private:
  Llmlingua2Meta meta_;
  int64_t window_ = 512;
  std::unique_ptr<XlmrTokenizer> sp_;
  std::unique_ptr<KeepClassifier> clf_;
};

// The `llmlingua2` grouping function over `make_classifier` (opts.params complete, see grouping.h).
std::unique_ptr<GroupingFunction> make_llmlingua2_function(const GroupingOptions& opts, const Tokenizer* tok,
                                                           const KeepClassifierMaker& make_classifier);

}  // namespace sftgo::grouping
