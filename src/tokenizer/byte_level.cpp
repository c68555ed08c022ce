#include "byte_level.h"

#include <array>

namespace sftgo::tok {
namespace {

struct Alphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};  // every stand-in is below U+0200
  Alphabet() {
    cp_to_byte.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the rest get U+0100 upwards, in byte order.
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return alphabet().byte_to_cp[b]; }

int codepoint_to_byte(uint32_t cp) { return cp < 512 ? alphabet().cp_to_byte[cp] : -1; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint32_t next_codepoint(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  if (i + len > s.size()) len = static_cast<int>(s.size() - i);  // defensive; input is validated
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

bool spelled_to_bytes(std::string_view spelled, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < spelled.size()) {
    int b = codepoint_to_byte(next_codepoint(spelled, i));
    if (b < 0) return false;
    out += static_cast<char>(b);
  }
  return true;
}

std::string decoder_bytes(std::string_view spelled) {
  std::string out;
  if (!spelled_to_bytes(spelled, out)) out.assign(spelled);
  return out;
}

std::string bytes_to_spelled(std::string_view raw) {
  std::string out;
  for (char c : raw) append_utf8(out, byte_to_codepoint(static_cast<uint8_t>(c)));
  return out;
}

void append_utf8_lossy(std::string& out, std::string_view s) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  const size_t n = s.size();
  auto at = [&](size_t k) -> int { return k < n ? static_cast<unsigned char>(s[k]) : -1; };
  auto is_cont = [](int b) { return b >= 0x80 && b <= 0xBF; };
  size_t i = 0;
  while (i < n) {
    const int b = at(i);
    if (b < 0x80) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    // How many bytes form a valid sequence here, else how many to replace (Unicode's
    // "maximal subpart" rule, which Rust follows).
    size_t valid = 0, bad = 1;
    if (b >= 0xC2 && b <= 0xDF) {
      if (is_cont(at(i + 1))) valid = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      const int b1 = at(i + 1);
      const bool ok1 = b == 0xE0 ? (b1 >= 0xA0 && b1 <= 0xBF) : b == 0xED ? (b1 >= 0x80 && b1 <= 0x9F) : is_cont(b1);
      if (ok1) {
        if (is_cont(at(i + 2)))
          valid = 3;
        else
          bad = 2;
      }
    } else if (b >= 0xF0 && b <= 0xF4) {
      const int b1 = at(i + 1);
      const bool ok1 = b == 0xF0 ? (b1 >= 0x90 && b1 <= 0xBF) : b == 0xF4 ? (b1 >= 0x80 && b1 <= 0x8F) : is_cont(b1);
      if (ok1) {
        if (!is_cont(at(i + 2)))
          bad = 2;
        else if (!is_cont(at(i + 3)))
          bad = 3;
        else
          valid = 4;
      }
    }
    if (valid) {
      out.append(s.data() + i, valid);
      i += valid;
    } else {
      out += kReplacement;
      i += bad;
    }
  }
}

}  // namespace sftgo::tok
