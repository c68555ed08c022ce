#define PCRE2_CODE_UNIT_WIDTH 8
#include "added_tokens.h"

#include <pcre2.h>

#include "byte_level.h"

namespace sftgo::tok {
namespace {

// Unicode White_Space, which Rust's regex \s (used by HF for lstrip/rstrip) matches.
bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Rust's Unicode \w; PCRE2's UCP \w is the closest (letters, marks, decimal digits, connector
// punctuation). Only tokens with single_word=true need it; Llama-3 has none.
bool is_word_char(uint32_t cp) {
  struct Re {
    pcre2_code* code = nullptr;
    Re() {
      int err;
      PCRE2_SIZE off;
      code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>("^[\\w\\p{M}\\x{200C}\\x{200D}]"), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    }
    ~Re() { pcre2_code_free(code); }
  };
  static const Re re;
  std::string s;
  append_utf8(s, cp);
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  const int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

uint32_t last_codepoint(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return next_codepoint(s, i);
}

uint32_t first_codepoint(std::string_view s) {
  size_t i = 0;
  return next_codepoint(s, i);
}

}  // namespace

void AddedTokenMatcher::Trie::add(const AddedTokenSpec& t) {
  if (nodes.empty()) nodes.emplace_back();
  int32_t cur = 0;
  for (unsigned char c : t.content) {
    int32_t child = -1;
    for (const auto& [b, idx] : nodes[cur].children)
      if (b == c) child = idx;
    if (child < 0) {
      child = static_cast<int32_t>(nodes.size());
      nodes[cur].children.emplace_back(c, child);
      nodes.emplace_back();
    }
    cur = child;
  }
  // HF keys added tokens by content: a repeated content keeps the later entry.
  if (nodes[cur].token >= 0) {
    tokens[nodes[cur].token] = t;
  } else {
    nodes[cur].token = static_cast<int32_t>(tokens.size());
    tokens.push_back(t);
  }
  first_byte[static_cast<unsigned char>(t.content[0])] = true;
}

bool AddedTokenMatcher::Trie::find(std::string_view text, size_t from, size_t& start, size_t& len,
                                   int32_t& token) const {
  if (tokens.empty()) return false;
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte[static_cast<unsigned char>(text[i])]) continue;
    int32_t cur = 0, best = -1;
    size_t best_len = 0;
    for (size_t j = i; j < text.size(); ++j) {
      const auto c = static_cast<unsigned char>(text[j]);
      int32_t child = -1;
      for (const auto& [b, idx] : nodes[cur].children)
        if (b == c) {
          child = idx;
          break;
        }
      if (child < 0) break;
      cur = child;
      if (nodes[cur].token >= 0) {
        best = nodes[cur].token;
        best_len = j + 1 - i;
      }
    }
    if (best >= 0) {
      start = i;
      len = best_len;
      token = best;
      return true;
    }
  }
  return false;
}

void AddedTokenMatcher::build(const std::vector<AddedTokenSpec>& tokens) {
  for (const AddedTokenSpec& t : tokens) (t.normalized ? normalized_ : raw_).add(t);
}

void AddedTokenMatcher::split_pass(const Trie& trie, std::string_view full, size_t begin, size_t end, bool skip_special,
                                   std::vector<TextSegment>& out) const {
  const std::string_view text = full.substr(begin, end - begin);
  size_t start_offset = 0, search = 0;
  size_t mstart, mlen;
  int32_t idx;
  // Mirrors HF's find_matches: matches are found on the original text, then widened by
  // lstrip/rstrip, dropped by single_word, or skipped when special tokens are plain text.
  while (search < text.size() && trie.find(text, search, mstart, mlen, idx)) {
    size_t stop = mstart + mlen;
    search = stop;
    const AddedTokenSpec& t = trie.tokens[idx];
    if (skip_special && t.special) continue;
    size_t start = mstart;
    if (t.single_word) {
      const bool space_before = start == 0 || !is_word_char(last_codepoint(text.substr(0, start)));
      const bool space_after = stop == text.size() || !is_word_char(first_codepoint(text.substr(stop)));
      if (!space_before || !space_after) continue;
    }
    if (t.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t p = s - 1;
        while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_white_space(next_codepoint(text, q))) break;
        s = p;
      }
      start = std::max(s, start_offset);
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!is_white_space(next_codepoint(text, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({begin + start_offset, begin + start, -1});
    out.push_back({begin + start, begin + stop, t.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({begin + start_offset, begin + text.size(), -1});
}

void AddedTokenMatcher::split(std::string_view text, bool skip_special, std::vector<TextSegment>& out) const {
  out.clear();
  if (text.empty()) return;
  if (raw_.tokens.empty() && normalized_.tokens.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  split_pass(raw_, text, 0, text.size(), skip_special, out);
  if (normalized_.tokens.empty()) return;
  std::vector<TextSegment> first;
  first.swap(out);
  for (const TextSegment& seg : first) {
    if (seg.token_id >= 0)
      out.push_back(seg);
    else
      split_pass(normalized_, text, seg.begin, seg.end, skip_special, out);
  }
}

}  // namespace sftgo::tok
