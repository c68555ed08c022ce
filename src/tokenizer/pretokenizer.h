// The Split pre-tokenizer: the regex from tokenizer.json run with PCRE2 (UTF + UCP + JIT), matches
// and the gaps between them emitted in order ("Isolated"), as HF's Split does with Oniguruma.
#pragma once

#include <string>
#include <string_view>

namespace sftgo::tok {

class SplitRegex {
 public:
  SplitRegex() = default;
  ~SplitRegex();
  SplitRegex(SplitRegex&& other) noexcept;
  SplitRegex& operator=(SplitRegex&& other) noexcept;
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // `literal`: the pattern is a plain string (HF's {"String": ...}). Errors name `path`.
  void compile(const std::string& pattern, bool literal, const std::string& path);

  // Calls on_piece(piece) for every match and every non-empty gap, left to right.
  // `text` must be valid UTF-8 (not re-checked).
  template <typename F>
  void split(std::string_view text, F&& on_piece) const {
    size_t pos = 0, gap_start = 0;
    size_t start = 0, end = 0;
    while (pos < text.size() && next_match(text, pos, start, end)) {
      if (start > gap_start) on_piece(text.substr(gap_start, start - gap_start));
      if (end > start) on_piece(text.substr(start, end - start));
      gap_start = end;
      pos = end > start ? end : advance_one_char(text, end);
    }
    if (gap_start < text.size()) on_piece(text.substr(gap_start));
  }

  // Rewrites \s, \S, \p{L}, \p{N} to the classes Oniguruma (HF) uses; see unicode_compat.h.
  // \S inside [...] is left as is (no such pattern is known).
  static std::string translate_pattern(const std::string& pattern);

 private:
  bool next_match(std::string_view text, size_t from, size_t& start, size_t& end) const;
  static size_t advance_one_char(std::string_view text, size_t at);

  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so users need no PCRE2 headers
};

}  // namespace sftgo::tok
