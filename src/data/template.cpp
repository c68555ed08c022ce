// llama3 / alpaca / plain templates and the truncation policy.
#include "sftgo/data/template.h"

#include "sftgo/core/error.h"

namespace sftgo::data {
namespace {

// Decodes one UTF-8 code point at s[i]; returns its length (1 for a stray byte, never 0).
size_t decode_utf8(const std::string& s, size_t i, char32_t& cp) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + len > s.size()) len = 1;
  cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return len;
}

// Python's str.isspace().
bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Appends `ids` with the given trained flag.
void append(TokenizedExample& ex, const std::vector<TokenId>& ids, bool trained) {
  for (TokenId id : ids) {
    ex.ids.push_back(id);
    ex.labels.push_back(trained ? id : kIgnoreLabel);
  }
}
void append(TokenizedExample& ex, TokenId id, bool trained) {
  ex.ids.push_back(id);
  ex.labels.push_back(trained ? id : kIgnoreLabel);
}

const char* kAlpacaPreamble =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const char* kAlpacaPreambleInput =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.";

}  // namespace

std::string py_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    char32_t cp;
    size_t n = decode_utf8(s, begin, cp);
    if (!py_isspace(cp)) break;
    begin += n;
  }
  // Walk forward to find the last non-space code point (UTF-8 cannot be decoded backwards cheaply).
  size_t last_end = begin;
  for (size_t i = begin; i < end;) {
    char32_t cp;
    size_t n = decode_utf8(s, i, cp);
    i += n;
    if (!py_isspace(cp)) last_end = i;
  }
  return s.substr(begin, last_end - begin);
}

TemplateKind parse_template_kind(const std::string& name) {
  if (name == "llama3") return TemplateKind::kLlama3;
  if (name == "alpaca") return TemplateKind::kAlpaca;
  if (name == "plain") return TemplateKind::kPlain;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown template '", name, "'; expected llama3, alpaca or plain");
}

const char* template_kind_name(TemplateKind kind) {
  switch (kind) {
    case TemplateKind::kLlama3: return "llama3";
    case TemplateKind::kAlpaca: return "alpaca";
    case TemplateKind::kPlain: return "plain";
  }
  return "?";
}

Truncation parse_truncation(const std::string& name) {
  if (name == "drop") return Truncation::kDrop;
  if (name == "truncate") return Truncation::kTruncate;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown truncation '", name, "'; expected drop or truncate");
}

const char* truncation_name(Truncation t) { return t == Truncation::kDrop ? "drop" : "truncate"; }

namespace {

// What every template's renderer needs: the example being built, the tokenizer, and errors that
// name the conversation's file:line.
struct TemplateWriter {
  TokenizedExample ex;
  const Tokenizer& tok;
  TemplateKind kind;
  const Conversation& conv;

  std::vector<TokenId> encode(const std::string& text) const {
    try {
      return tok.encode_ordinary(text);
    } catch (const Error& e) {
      SFTGO_FAIL(ErrorKind::kData, conv.source.file, ":", conv.source.line, ": cannot tokenize: ", e.message());
    }
  }
  TokenId need(std::optional<TokenId> id, const char* what) const {
    SFTGO_CHECK_HINT(id.has_value(), ErrorKind::kTokenizer, "use a tokenizer whose tokenizer_config.json names it",
                     "the ", template_kind_name(kind), " template needs a ", what, " token; ", tok.source_path(),
                     " has none");
    return *id;
  }
};

void render_llama3(TemplateWriter& w, const std::vector<Message>& messages, bool generation_prompt) {
  const TokenId start = w.tok.special_id("<|start_header_id|>");
  const TokenId end = w.tok.special_id("<|end_header_id|>");
  const TokenId eot = w.tok.special_id("<|eot_id|>");
  const std::vector<TokenId> blank = w.encode("\n\n");
  append(w.ex, w.need(w.tok.bos_id(), "BOS"), false);
  for (const auto& m : messages) {
    const bool trained = m.role == Role::kAssistant;
    append(w.ex, start, false);
    append(w.ex, w.encode(role_name(m.role)), false);
    append(w.ex, end, false);
    append(w.ex, blank, false);
    // The HF template renders header + "\n\n" + trim(content) as one text run; encoding the two
    // parts separately gives the same ids because the pre-tokenizer always splits after "\n\n"
    // when the next character is not whitespace (which trim guarantees).
    append(w.ex, w.encode(py_strip(m.content)), trained);
    append(w.ex, eot, trained);
  }
  if (generation_prompt) {
    append(w.ex, start, false);
    append(w.ex, w.encode("assistant"), false);
    append(w.ex, end, false);
    append(w.ex, blank, false);
  }
}

void render_alpaca(TemplateWriter& w, const std::vector<Message>& messages, const std::string& input,
                   bool generation_prompt) {
  const TokenId eos = w.need(w.tok.eos_id(), "EOS");
  if (w.tok.bos_id()) append(w.ex, *w.tok.bos_id(), false);
  std::string prompt;
  bool first_turn = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == Role::kSystem) {
      if (prompt.empty() && first_turn)
        prompt = m.content;
      else
        prompt += "\n\n" + m.content;
      continue;
    }
    if (m.role == Role::kUser) {
      if (first_turn && prompt.empty()) prompt = input.empty() ? kAlpacaPreamble : kAlpacaPreambleInput;
      prompt += "\n\n### Instruction:\n" + m.content;
      if (first_turn && !input.empty()) prompt += "\n\n### Input:\n" + input;
      first_turn = false;
      continue;
    }
    prompt += "\n\n### Response:\n";
    append(w.ex, w.encode(prompt), false);
    prompt.clear();
    append(w.ex, w.encode(m.content), true);
    append(w.ex, eos, true);
  }
  if (generation_prompt) {
    if (first_turn && prompt.empty()) prompt = input.empty() ? kAlpacaPreamble : kAlpacaPreambleInput;
    append(w.ex, w.encode(prompt + "\n\n### Response:\n"), false);
  }
}

void render_plain(TemplateWriter& w, const std::vector<Message>& messages, bool generation_prompt) {
  const TokenId eos = w.need(w.tok.eos_id(), "EOS");
  if (w.tok.bos_id()) append(w.ex, *w.tok.bos_id(), false);
  std::string prompt;
  for (const auto& m : messages) {
    if (m.role != Role::kAssistant) {
      prompt += m.content + "\n";
      continue;
    }
    append(w.ex, w.encode(prompt), false);
    prompt.clear();
    append(w.ex, w.encode(m.content), true);
    append(w.ex, eos, true);
  }
  if (generation_prompt) append(w.ex, w.encode(prompt), false);
}

}  // namespace

TokenizedExample apply_template(const Conversation& conv, const Tokenizer& tok, TemplateKind kind,
                                const std::optional<std::string>& system_prompt, bool add_generation_prompt) {
  std::vector<Message> messages = conv.messages;
  bool has_system = false;
  for (const auto& m : messages) has_system |= m.role == Role::kSystem;
  if (system_prompt && !has_system) messages.insert(messages.begin(), Message{Role::kSystem, *system_prompt});
  if (!conv.input.empty() && kind != TemplateKind::kAlpaca) {
    for (auto& m : messages) {
      if (m.role == Role::kUser) {
        m.content += "\n\n" + conv.input;
        break;
      }
    }
  }
  TemplateWriter w{{}, tok, kind, conv};
  w.ex.source = conv.source;
  switch (kind) {
    case TemplateKind::kLlama3: render_llama3(w, messages, add_generation_prompt); break;
    case TemplateKind::kAlpaca: render_alpaca(w, messages, conv.input, add_generation_prompt); break;
    case TemplateKind::kPlain: render_plain(w, messages, add_generation_prompt); break;
  }
  return std::move(w.ex);
}

std::vector<TokenId> render_generation_prompt(const std::string& user_text, const Tokenizer& tok, TemplateKind kind,
                                              const std::optional<std::string>& system_prompt) {
  Conversation conv;
  conv.messages.push_back(Message{Role::kUser, user_text});
  conv.source = {"--prompt", 1};
  return apply_template(conv, tok, kind, system_prompt, /*add_generation_prompt=*/true).ids;
}

FitResult fit_to_length(TokenizedExample& ex, int64_t max_seq_len, Truncation policy) {
  SFTGO_CHECK(max_seq_len > 0, ErrorKind::kConfig, "max_seq_len must be positive, got ", max_seq_len);
  FitResult result = FitResult::kKept;
  if (static_cast<int64_t>(ex.ids.size()) > max_seq_len) {
    if (policy == Truncation::kDrop) return FitResult::kDroppedTooLong;
    const size_t n = static_cast<size_t>(max_seq_len);
    ex.ids.resize(n);
    ex.labels.resize(n);
    if (!ex.groups.empty()) ex.groups.resize(n);
    for (auto& [name, v] : ex.scores) v.resize(n);
    ex.truncated = true;
    result = FitResult::kTruncated;
  }
  if (ex.num_trained() == 0) return FitResult::kDroppedNoTrained;
  return result;
}

int64_t TokenizedExample::num_trained() const {
  int64_t n = 0;
  for (int32_t l : labels) n += l != kIgnoreLabel;
  return n;
}

void TokenizedExample::check_consistent() const {
  SFTGO_CHECK(labels.size() == ids.size(), ErrorKind::kInternal, "example ", index, ": ", labels.size(), " labels for ",
              ids.size(), " ids");
  SFTGO_CHECK(groups.empty() || groups.size() == ids.size(), ErrorKind::kInternal, "example ", index, ": ",
              groups.size(), " group entries for ", ids.size(), " ids");
  for (const auto& [name, v] : scores) {
    SFTGO_CHECK(v.size() == ids.size(), ErrorKind::kInternal, "example ", index, ": score '", name, "' has ", v.size(),
                " entries for ", ids.size(), " ids");
  }
}

}  // namespace sftgo::data
