#include "tokenizer_json.h"

#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"

namespace sftgo::tok {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxDepth = 256;  // tokenizer.json is shallow; deeper means garbage

// Builds a DOM of everything except model.vocab and model.merges, which go straight to the spec.
class SpecSax : public nlohmann::json_sax<Json> {
 public:
  explicit SpecSax(TokenizerSpec& spec) : spec_(spec) {}

  Json root;
  std::string error;  // set when a callback rejects the input
  bool saw_vocab = false, saw_merges = false;

  bool null() override { return value(Json(nullptr)); }
  bool boolean(bool v) override { return value(Json(v)); }
  bool number_integer(number_integer_t v) override {
    if (mode_ == Mode::kVocab)
      return fail("model.vocab[\"" + key_ + "\"] must be a non-negative integer id, got " + std::to_string(v));
    return value(Json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == Mode::kVocab) {
      if (v > 0x7FFFFFFF) return fail("model.vocab[\"" + key_ + "\"] id " + std::to_string(v) + " is out of range");
      spec_.vocab.emplace_back(std::move(key_), static_cast<int32_t>(v));
      return true;
    }
    return value(Json(v));
  }
  bool number_float(number_float_t v, const string_t&) override {
    if (mode_ == Mode::kVocab) return fail("model.vocab[\"" + key_ + "\"] must be an integer id, got a float");
    return value(Json(v));
  }
  bool string(string_t& v) override {
    if (mode_ == Mode::kMerges) {
      // "a b": the tokens themselves never hold a space (byte-level spells it as U+0120).
      size_t sp = v.find(' ');
      if (sp == std::string::npos || v.find(' ', sp + 1) != std::string::npos)
        return fail("model.merges[" + std::to_string(spec_.merges.size()) + "] \"" + v +
                    "\" must be two tokens separated by one space");
      spec_.merges.emplace_back(v.substr(0, sp), v.substr(sp + 1));
      return true;
    }
    if (mode_ == Mode::kMergePair) {
      if (pair_.size() >= 2) return fail(merge_pair_error());
      pair_.push_back(std::move(v));
      return true;
    }
    if (mode_ == Mode::kVocab) return fail("model.vocab[\"" + key_ + "\"] must be an integer id, got a string");
    return value(Json(std::move(v)));
  }
  bool binary(binary_t&) override { return fail("unexpected binary value"); }

  bool start_object(std::size_t) override {
    if (mode_ != Mode::kDom)
      return fail(mode_ == Mode::kVocab ? "model.vocab values must be integer ids" : merge_pair_error());
    if (stack_.size() == 2 && in_model() && key_ == "vocab") {
      mode_ = Mode::kVocab;
      saw_vocab = true;
      return true;
    }
    return open(Json::object());
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    path_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kMergePair;
      pair_.clear();
      return true;
    }
    if (mode_ != Mode::kDom)
      return fail(mode_ == Mode::kVocab ? "model.vocab values must be integer ids" : merge_pair_error());
    if (stack_.size() == 2 && in_model() && key_ == "merges") {
      mode_ = Mode::kMerges;
      saw_merges = true;
      return true;
    }
    return open(Json::array());
  }
  bool end_array() override {
    if (mode_ == Mode::kMergePair) {
      if (pair_.size() != 2) return fail(merge_pair_error());
      spec_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      mode_ = Mode::kMerges;
      return true;
    }
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    path_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    if (error.empty()) {
      std::string what = ex.what();
      // nlohmann's text is "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
      auto colon = what.find("parse error");
      error = "not valid JSON near byte " + std::to_string(position) + ": " +
              (colon == std::string::npos ? what : what.substr(colon));
    }
    return false;
  }

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };

  bool in_model() const { return path_.size() == 2 && path_[1] == "model"; }
  std::string merge_pair_error() const {
    return "model.merges[" + std::to_string(spec_.merges.size()) +
           "] must be \"a b\" or a pair [\"a\", \"b\"] of strings";
  }
  bool fail(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  Json* place(Json v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Json& top = *stack_.back();
    if (top.is_object()) {
      Json& slot = top[key_];
      slot = std::move(v);
      return &slot;
    }
    top.push_back(std::move(v));
    return &top.back();
  }
  bool value(Json v) {
    if (mode_ != Mode::kDom) {
      return fail(mode_ == Mode::kVocab ? "model.vocab[\"" + key_ + "\"] must be an integer id" : merge_pair_error());
    }
    place(std::move(v));
    return true;
  }
  bool open(Json v) {
    if (stack_.size() >= kMaxDepth) return fail("JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
    std::string via = stack_.empty() || !stack_.back()->is_object() ? std::string() : key_;
    stack_.push_back(place(std::move(v)));
    path_.push_back(std::move(via));
    return true;
  }

  TokenizerSpec& spec_;
  Mode mode_ = Mode::kDom;
  std::vector<Json*> stack_;
  std::vector<std::string> path_;  // the key that led into each open container
  std::string key_;
  std::vector<std::string> pair_;
};

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  SFTGO_FAIL_HINT(ErrorKind::kTokenizer, "use the tokenizer.json of a Llama-3 model from the Hugging Face Hub", path,
                  ": ", what);
}

const Json& member(const Json& obj, const char* key, const std::string& where, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end()) bad(path, "missing \"" + std::string(key) + "\" in " + where);
  return *it;
}

std::string type_name(const Json& j) { return j.type_name(); }

bool get_bool(const Json& obj, const char* key, bool dflt, const std::string& where, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) bad(path, where + "." + key + " must be a boolean, got " + type_name(*it));
  return it->get<bool>();
}

const std::string* get_string(const Json& obj, const char* key, const std::string& where, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  if (!it->is_string()) bad(path, where + "." + key + " must be a string, got " + type_name(*it));
  return it->get_ptr<const std::string*>();
}

void check_model(const Json& model, TokenizerSpec& spec, const std::string& path) {
  if (!model.is_object()) bad(path, "\"model\" must be an object, got " + type_name(model));
  if (const std::string* type = get_string(model, "type", "model", path); type && *type != "BPE")
    bad(path, "model.type is \"" + *type + "\"; only byte-level \"BPE\" is supported");
  if (get_bool(model, "byte_fallback", false, "model", path)) bad(path, "model.byte_fallback=true is not supported");
  if (auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    if (!it->is_number()) bad(path, "model.dropout must be a number or null");
    if (it->get<double>() != 0.0)
      bad(path, "model.dropout is set; BPE dropout is not supported (encode must be deterministic)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string* s = get_string(model, key, "model", path);
    if (s && !s->empty()) bad(path, std::string("model.") + key + " is set; not supported for byte-level BPE");
  }
  spec.ignore_merges = get_bool(model, "ignore_merges", false, "model", path);
  spec.fuse_unk = get_bool(model, "fuse_unk", false, "model", path);
  if (const std::string* unk = get_string(model, "unk_token", "model", path)) spec.unk_token = *unk;
}

void check_pre_tokenizer(const Json& root, TokenizerSpec& spec, const std::string& path) {
  static const char* kSupported =
      "supported: Sequence[Split(pattern, behavior=Isolated, invert=false), ByteLevel(add_prefix_space=false, use_regex=false)]";
  auto it = root.find("pre_tokenizer");
  if (it == root.end() || it->is_null()) bad(path, std::string("missing \"pre_tokenizer\"; ") + kSupported);
  const Json& pre = *it;
  if (!pre.is_object()) bad(path, "\"pre_tokenizer\" must be an object");
  const std::string* type = get_string(pre, "type", "pre_tokenizer", path);
  const Json* list = nullptr;
  if (type && *type == "Sequence") list = &member(pre, "pretokenizers", "pre_tokenizer", path);
  if (!list || !list->is_array() || list->size() != 2)
    bad(path, std::string("unsupported pre_tokenizer; ") + kSupported);
  const Json& split = (*list)[0];
  const Json& byte_level = (*list)[1];
  if (!split.is_object() || !byte_level.is_object()) bad(path, std::string("unsupported pre_tokenizer; ") + kSupported);
  const std::string* t0 = get_string(split, "type", "pre_tokenizer.pretokenizers[0]", path);
  const std::string* t1 = get_string(byte_level, "type", "pre_tokenizer.pretokenizers[1]", path);
  if (!t0 || *t0 != "Split" || !t1 || *t1 != "ByteLevel")
    bad(path, std::string("unsupported pre_tokenizer; ") + kSupported);

  const Json& pattern = member(split, "pattern", "pre_tokenizer Split", path);
  if (!pattern.is_object()) bad(path, "pre_tokenizer Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
  if (const std::string* re = get_string(pattern, "Regex", "Split.pattern", path)) {
    spec.split_pattern = *re;
    spec.split_is_regex = true;
  } else if (const std::string* lit = get_string(pattern, "String", "Split.pattern", path)) {
    spec.split_pattern = *lit;
    spec.split_is_regex = false;
  } else {
    bad(path, "pre_tokenizer Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
  }
  const std::string* behavior = get_string(split, "behavior", "Split", path);
  if (!behavior || *behavior != "Isolated") bad(path, "pre_tokenizer Split behavior must be \"Isolated\"");
  if (get_bool(split, "invert", false, "Split", path)) bad(path, "pre_tokenizer Split invert=true is not supported");
  if (get_bool(byte_level, "add_prefix_space", true, "ByteLevel", path))
    bad(path, "pre_tokenizer ByteLevel add_prefix_space=true is not supported");
  if (get_bool(byte_level, "use_regex", true, "ByteLevel", path))
    bad(path, "pre_tokenizer ByteLevel use_regex=true is not supported (the Split regex does the splitting)");
}

void check_added_tokens(const Json& root, TokenizerSpec& spec, const std::string& path) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return;
  if (!it->is_array()) bad(path, "\"added_tokens\" must be an array, got " + type_name(*it));
  size_t i = 0;
  for (const Json& t : *it) {
    const std::string where = "added_tokens[" + std::to_string(i++) + "]";
    if (!t.is_object()) bad(path, where + " must be an object");
    AddedTokenSpec a;
    const Json& id = member(t, "id", where, path);
    if (!id.is_number_unsigned() || id.get<uint64_t>() > 0x7FFFFFFF)
      bad(path, where + ".id must be a non-negative integer");
    a.id = static_cast<int32_t>(id.get<uint64_t>());
    const Json& content = member(t, "content", where, path);
    if (!content.is_string()) bad(path, where + ".content must be a string");
    a.content = content.get<std::string>();
    if (a.content.empty()) bad(path, where + ".content is empty");
    a.special = get_bool(t, "special", false, where, path);
    a.single_word = get_bool(t, "single_word", false, where, path);
    a.lstrip = get_bool(t, "lstrip", false, where, path);
    a.rstrip = get_bool(t, "rstrip", false, where, path);
    a.normalized = get_bool(t, "normalized", !a.special, where, path);
    spec.added_tokens.push_back(std::move(a));
  }
}

}  // namespace

TokenizerSpec parse_tokenizer_json(const std::string& text, const std::string& path) {
  TokenizerSpec spec;
  SpecSax sax(spec);
  bool ok = false;
  try {
    ok = Json::sax_parse(text, &sax);
  } catch (const nlohmann::json::exception& e) {
    bad(path, std::string("not valid JSON: ") + e.what());
  }
  if (!ok) bad(path, sax.error.empty() ? "not valid JSON" : sax.error);
  const Json& root = sax.root;
  if (!root.is_object()) bad(path, "top level must be a JSON object, got " + type_name(root));
  auto model_it = root.find("model");
  if (model_it == root.end() && !sax.saw_vocab) bad(path, "missing \"model\" (the BPE vocab and merges)");
  if (model_it != root.end()) check_model(*model_it, spec, path);
  if (!sax.saw_vocab) {
    if (model_it != root.end() && model_it->contains("vocab")) bad(path, "model.vocab must be an object {token: id}");
    bad(path, "missing \"vocab\" in model");
  }
  if (!sax.saw_merges) {
    if (model_it != root.end() && model_it->contains("merges")) bad(path, "model.merges must be an array");
    bad(path, "missing \"merges\" in model");
  }
  if (spec.vocab.empty()) bad(path, "model.vocab is empty");
  if (auto it = root.find("normalizer"); it != root.end() && !it->is_null())
    bad(path, "a normalizer is set; only tokenizers without a normalizer (Llama-3) are supported");
  check_pre_tokenizer(root, spec, path);
  auto dec = root.find("decoder");
  if (dec == root.end() || !dec->is_object() || !dec->contains("type") || (*dec)["type"] != "ByteLevel")
    bad(path, "decoder must be {\"type\": \"ByteLevel\"}");
  check_added_tokens(root, spec, path);
  return spec;
}

SpecialTokenConfig parse_tokenizer_config(const std::string& text, const std::string& path) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kTokenizer, path, ": not valid JSON: ", e.what());
  }
  SFTGO_CHECK(j.is_object(), ErrorKind::kTokenizer, path, ": top level must be a JSON object");
  SpecialTokenConfig cfg;
  auto read = [&](const char* key, std::optional<std::string>& out, bool& has) {
    auto it = j.find(key);
    if (it == j.end()) return;
    has = true;
    if (it->is_null()) return;
    if (it->is_string()) {
      out = it->get<std::string>();
    } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      out = (*it)["content"].get<std::string>();
    } else {
      SFTGO_FAIL(ErrorKind::kTokenizer, path, ": ", key, " must be a string, {\"content\": string} or null");
    }
  };
  read("bos_token", cfg.bos, cfg.has_bos_key);
  read("eos_token", cfg.eos, cfg.has_eos_key);
  read("pad_token", cfg.pad, cfg.has_pad_key);
  return cfg;
}

}  // namespace sftgo::tok
