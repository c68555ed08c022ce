#define PCRE2_CODE_UNIT_WIDTH 8
#include "pretokenizer.h"

#include <pcre2.h>

#include <utility>

#include "sftgo/core/error.h"
#include "unicode_compat.h"

namespace sftgo::tok {
namespace {

// Per-thread match state: match data, and a JIT stack larger than the 32 KiB default so long
// runs of one character class never fail to match.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace

SplitRegex::~SplitRegex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

SplitRegex::SplitRegex(SplitRegex&& other) noexcept : code_(std::exchange(other.code_, nullptr)) {}

SplitRegex& SplitRegex::operator=(SplitRegex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(static_cast<pcre2_code*>(code_));
    code_ = std::exchange(other.code_, nullptr);
  }
  return *this;
}

std::string SplitRegex::translate_pattern(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 2048);
  bool in_class = false;
  // Emits a class body: bare inside [...], wrapped (or negated) outside.
  auto emit = [&](const std::string& body, bool negate) {
    if (in_class)
      out += body;
    else
      out += (negate ? "[^" : "[") + body + "]";
  };
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      if (e == 's') {
        emit(kWhiteSpaceClass, false);
      } else if (e == 'S' && !in_class) {
        emit(kWhiteSpaceClass, true);
      } else if ((e == 'p') && p.compare(i + 1, 3, "{L}") == 0) {
        emit(std::string("\\p{L}") + kExtraLetters, false);
        i += 3;
      } else if ((e == 'p') && p.compare(i + 1, 3, "{N}") == 0) {
        emit(std::string("\\p{N}") + kExtraNumbers, false);
        i += 3;
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      // POSIX class such as [:alpha:] inside a class: copy through its closing ":]".
      size_t close = p.find(":]", i + 2);
      if (close != std::string::npos) {
        out.append(p, i, close + 2 - i);
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

void SplitRegex::compile(const std::string& pattern, bool literal, const std::string& path) {
  const std::string source = literal ? pattern : translate_pattern(pattern);
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
  if (literal) options = PCRE2_UTF | PCRE2_LITERAL;
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options, &err, &err_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    SFTGO_FAIL(ErrorKind::kTokenizer, path, ": pre_tokenizer Split pattern does not compile (",
               reinterpret_cast<char*>(msg), " at offset ", err_offset, ")");
  }
  // JIT is a speed-up only; the interpreter gives the same matches if JIT is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  pcre2_code_free(static_cast<pcre2_code*>(code_));
  code_ = code;
}

bool SplitRegex::next_match(std::string_view text, size_t from, size_t& start, size_t& end) const {
  MatchState& st = match_state();
  SFTGO_CHECK(st.data && st.context, ErrorKind::kInternal, "PCRE2 could not allocate match data");
  const int rc = pcre2_match(static_cast<pcre2_code*>(code_), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                             from, PCRE2_NO_UTF_CHECK, st.data, st.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    SFTGO_FAIL(ErrorKind::kTokenizer, "pre-tokenizer regex failed at byte ", from, " of a ", text.size(),
               "-byte text: ", reinterpret_cast<char*>(msg));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
  start = ov[0];
  end = ov[1];
  return true;
}

size_t SplitRegex::advance_one_char(std::string_view text, size_t at) {
  ++at;
  while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
  return at;
}

}  // namespace sftgo::tok
