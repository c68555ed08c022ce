#include "sftgo/tokenizer/tokenizer.h"

#include <atomic>
#include <filesystem>
#include <unordered_map>

#include "added_tokens.h"
#include "bpe.h"
#include "byte_level.h"
#include "pretokenizer.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "tokenizer_json.h"

namespace sftgo {

struct Tokenizer::Impl {
  std::string source_path;
  tok::BpeModel bpe;
  tok::SplitRegex split;
  tok::AddedTokenMatcher matcher;
  std::vector<AddedToken> added;
  tok::StringMap<int32_t> vocab_by_spelling;
  std::unordered_map<std::string, TokenId> added_by_content;
  std::vector<std::string> spelled;  // id -> spelling in tokenizer.json
  std::vector<std::string> bytes;    // id -> bytes the decoder emits for it
  std::vector<uint8_t> flags;        // id -> kAssigned | kSpecial
  std::optional<TokenId> bos, eos, pad;

  static constexpr uint8_t kAssigned = 1, kSpecial = 2;

  void encode_text(std::string_view text, std::vector<TokenId>& out) const {
    split.split(text, [&](std::string_view piece) { bpe.encode_word(piece, out); });
  }
  void check_id(TokenId id) const {
    SFTGO_CHECK(id >= 0 && static_cast<size_t>(id) < flags.size() && (flags[id] & kAssigned), ErrorKind::kTokenizer,
                "token id ", id, " is not in the tokenizer (", source_path, ", ids 0..", flags.size() - 1, ")");
  }

  // Tokenizer::load's steps, in order: the model's vocab (returns the largest id), the added tokens
  // (ids assigned as HF does), then BOS/EOS/PAD from tokenizer_config.json ("" = none there).
  int32_t load_vocab(const tok::TokenizerSpec& spec);
  void load_added_tokens(tok::TokenizerSpec& spec, int32_t max_id);
  void load_special_tokens(const std::string& config_path);
};

namespace {

struct Paths {
  std::string json;
  std::string config;  // empty when there is none
};

Paths resolve_paths(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  Paths p;
  fs::path dir;
  if (fs::is_directory(path, ec)) {
    dir = path;
    p.json = (dir / "tokenizer.json").string();
    SFTGO_CHECK_HINT(fs::exists(p.json, ec), ErrorKind::kIo, "pass the model directory or its tokenizer.json",
                     "no tokenizer.json in directory ", path);
  } else {
    // The hint names the tokenizer every clone has, so a config pointing at a missing one has a way out.
    SFTGO_CHECK_HINT(fs::exists(path, ec), ErrorKind::kIo,
                     "pass the model directory or its tokenizer.json; a small Llama-3-style tokenizer ships in "
                     "data/demo/tokenizer (with model.vocab_size: 1408)",
                     "tokenizer file not found: ", path);
    p.json = path;
    dir = fs::path(path).parent_path();
  }
  fs::path cfg = dir.empty() ? fs::path("tokenizer_config.json") : dir / "tokenizer_config.json";
  if (fs::is_regular_file(cfg, ec)) p.config = cfg.string();
  return p;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int32_t Tokenizer::Impl::load_vocab(const tok::TokenizerSpec& spec) {
  const std::string& file = source_path;
  int32_t max_id = -1;
  for (const auto& [s, id] : spec.vocab) max_id = std::max(max_id, id);
  // Tables are indexed by id: a sparse id space would only waste memory (and is not a real tokenizer).
  const int64_t id_limit = 2 * static_cast<int64_t>(spec.vocab.size()) + 65536;
  SFTGO_CHECK(max_id < id_limit, ErrorKind::kTokenizer, file, ": token id ", max_id, " is implausibly large for ",
              spec.vocab.size(), " vocab entries (ids should be 0..vocab size)");
  const size_t n = static_cast<size_t>(max_id) + 1;
  spelled.resize(n);
  bytes.resize(n);
  flags.assign(n, 0);

  vocab_by_spelling.reserve(spec.vocab.size());
  for (const auto& [s, id] : spec.vocab) {
    SFTGO_CHECK(!(flags[id] & kAssigned), ErrorKind::kTokenizer, file, ": model.vocab gives id ", id, " to both \"",
                spelled[id], "\" and \"", s, "\"");
    SFTGO_CHECK(vocab_by_spelling.insert(s, id), ErrorKind::kTokenizer, file, ": model.vocab lists \"", s,
                "\" twice");
    spelled[id] = s;
    bytes[id] = tok::decoder_bytes(s);
    flags[id] = kAssigned;
  }
  return max_id;
}

void Tokenizer::Impl::load_added_tokens(tok::TokenizerSpec& spec, int32_t max_id) {
  // HF ignores the ids written in added_tokens and assigns them as AddedVocabulary::add_tokens does:
  // a content already in the vocab keeps its vocab id, others get the next id after the vocab and
  // the added tokens so far; a repeated content is ignored. Llama-3's file agrees with this.
  std::vector<tok::AddedTokenSpec> kept;
  std::optional<int32_t> max_added;
  const auto vocab_count = static_cast<int32_t>(spec.vocab.size());
  for (auto& a : spec.added_tokens) {
    if (added_by_content.count(a.content)) continue;
    if (const int32_t* id = vocab_by_spelling.find(a.content))
      a.id = *id;
    else if (!max_added)
      a.id = vocab_count;
    else
      a.id = *max_added >= vocab_count ? *max_added + 1 : vocab_count;
    max_added = std::max(max_added.value_or(a.id), a.id);
    added_by_content[a.content] = a.id;
    kept.push_back(std::move(a));
  }
  spec.added_tokens = std::move(kept);
  for (const auto& a : spec.added_tokens) max_id = std::max(max_id, a.id);
  if (static_cast<size_t>(max_id) + 1 > flags.size()) {
    spelled.resize(max_id + 1);
    bytes.resize(max_id + 1);
    flags.resize(max_id + 1, 0);
  }
  for (const auto& a : spec.added_tokens) {
    // An added token may reuse a vocab id; its content then wins, as in HF's id_to_token.
    spelled[a.id] = a.content;
    bytes[a.id] = tok::decoder_bytes(a.content);
    flags[a.id] = kAssigned | (a.special ? kSpecial : 0);
    added.push_back({a.id, a.content, a.special});
  }
}

void Tokenizer::Impl::load_special_tokens(const std::string& config_path) {
  tok::SpecialTokenConfig cfg;
  if (!config_path.empty()) cfg = tok::parse_tokenizer_config(read_file(config_path), config_path);
  // The config's value when it names one (null means none); else the Llama-3 default if present.
  auto pick = [&](const std::optional<std::string>& configured, bool has_key, const char* fallback,
                  const char* key) -> std::optional<TokenId> {
    auto lookup = [&](const std::string& s) -> std::optional<TokenId> {
      if (auto it = added_by_content.find(s); it != added_by_content.end()) return it->second;
      if (const int32_t* id = vocab_by_spelling.find(s)) return *id;
      return std::nullopt;
    };
    if (configured) {
      auto id = lookup(*configured);
      SFTGO_CHECK(id, ErrorKind::kTokenizer, config_path, ": ", key, " \"", *configured,
                  "\" is not a token of the tokenizer.json next to it");
      return id;
    }
    if (has_key) return std::nullopt;
    return lookup(fallback);
  };
  bos = pick(cfg.bos, cfg.has_bos_key, "<|begin_of_text|>", "bos_token");
  eos = pick(cfg.eos, cfg.has_eos_key, "<|end_of_text|>", "eos_token");
  pad = pick(cfg.pad, cfg.has_pad_key, "<|finetune_right_pad_id|>", "pad_token");
}

Tokenizer Tokenizer::load(const std::string& path) {
  const Paths paths = resolve_paths(path);
  auto impl = std::make_unique<Impl>();
  impl->source_path = paths.json;
  const std::string& file = paths.json;
  tok::TokenizerSpec spec = tok::parse_tokenizer_json(read_file(file), file);
  const int32_t max_id = impl->load_vocab(spec);
  impl->bpe.build(spec, impl->vocab_by_spelling, file);
  impl->load_added_tokens(spec, max_id);
  impl->matcher.build(spec.added_tokens);
  impl->split.compile(spec.split_pattern, !spec.split_is_regex, file);
  impl->load_special_tokens(paths.config);
  return Tokenizer(std::move(impl));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, SpecialTokens special) const {
  const size_t bad = find_invalid_utf8(text);
  SFTGO_CHECK_HINT(bad == std::string::npos, ErrorKind::kTokenizer, "clean or re-encode the data as UTF-8",
                   "text to encode is not valid UTF-8 at byte offset ", bad, " (near \"",
                   excerpt(text.substr(bad >= 16 ? bad - 16 : 0, 40)), "\")");
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 4);
  if (impl_->matcher.empty()) {
    impl_->encode_text(text, out);
    return out;
  }
  thread_local std::vector<tok::TextSegment> segments;
  impl_->matcher.split(text, special == SpecialTokens::kOrdinary, segments);
  for (const tok::TextSegment& seg : segments) {
    if (seg.token_id >= 0)
      out.push_back(seg.token_id);
    else
      impl_->encode_text(text.substr(seg.begin, seg.end - seg.begin), out);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool skip_special) const {
  std::string raw;
  raw.reserve(ids.size() * 4);
  for (TokenId id : ids) {
    impl_->check_id(id);
    if (skip_special && (impl_->flags[id] & Impl::kSpecial)) continue;
    raw += impl_->bytes[id];
  }
  std::string out;
  out.reserve(raw.size());
  tok::append_utf8_lossy(out, raw);
  return out;
}

std::string Tokenizer::token_bytes(TokenId id) const {
  impl_->check_id(id);
  return impl_->bytes[id];
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->flags.size()); }

std::optional<TokenId> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(std::string(token)); it != impl_->added_by_content.end())
    return it->second;
  if (const int32_t* id = impl_->vocab_by_spelling.find(token)) return *id;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(TokenId id) const {
  impl_->check_id(id);
  return impl_->spelled[id];
}

TokenId Tokenizer::special_id(std::string_view content) const {
  auto it = impl_->added_by_content.find(std::string(content));
  SFTGO_CHECK(it != impl_->added_by_content.end() && (impl_->flags[it->second] & Impl::kSpecial), ErrorKind::kTokenizer,
              "\"", content, "\" is not a special token of ", impl_->source_path);
  return it->second;
}

bool Tokenizer::is_special(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->flags.size() && (impl_->flags[id] & Impl::kSpecial);
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
std::optional<TokenId> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<TokenId> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<TokenId> Tokenizer::pad_id() const { return impl_->pad; }
const std::string& Tokenizer::source_path() const { return impl_->source_path; }

}  // namespace sftgo
