#include "sftgo/core/format.h"

#include <cstdio>

namespace sftgo {
namespace {

std::string render(const FormatArg& a, std::string_view spec) {
  // spec: [[fill]align][width][.precision][type]
  char fill = ' ', align = 0, type = 0;
  size_t i = 0;
  if (spec.size() >= 2 && (spec[1] == '<' || spec[1] == '>' || spec[1] == '^')) {
    fill = spec[0];
    align = spec[1];
    i = 2;
  } else if (!spec.empty() && (spec[0] == '<' || spec[0] == '>' || spec[0] == '^')) {
    align = spec[0];
    i = 1;
  }
  bool zero_pad = false;  // "{:08.3f}", "{:016x}": numbers padded with zeros after the sign
  if (!align && i < spec.size() && spec[i] == '0') {
    zero_pad = true;
    ++i;
  }
  int width = 0, precision = -1;
  while (i < spec.size() && spec[i] >= '0' && spec[i] <= '9') width = width * 10 + (spec[i++] - '0');
  if (i < spec.size() && spec[i] == '.') {
    precision = 0;
    ++i;
    while (i < spec.size() && spec[i] >= '0' && spec[i] <= '9') precision = precision * 10 + (spec[i++] - '0');
  }
  if (i < spec.size()) type = spec[i];

  char buf[64];
  std::string out;
  switch (a.kind) {
    case FormatArg::Kind::kBool: out = a.i ? "true" : "false"; break;
    case FormatArg::Kind::kInt:
      std::snprintf(buf, sizeof buf, type == 'x' ? "%llx" : "%lld", static_cast<long long>(a.i));
      out = buf;
      break;
    case FormatArg::Kind::kUint:
      std::snprintf(buf, sizeof buf, type == 'x' ? "%llx" : "%llu", static_cast<unsigned long long>(a.u));
      out = buf;
      break;
    case FormatArg::Kind::kDouble: {
      char t = (type == 'f' || type == 'e' || type == 'g') ? type : 'g';
      int p = precision >= 0 ? precision : (t == 'g' ? 6 : 6);
      char f[8] = {'%', '.', '*', t, 0};
      std::snprintf(buf, sizeof buf, f, p, a.d);
      out = buf;
      break;
    }
    case FormatArg::Kind::kString:
      out = precision >= 0 && static_cast<size_t>(precision) < a.s.size() ? a.s.substr(0, precision) : a.s;
      break;
  }
  if (zero_pad && a.kind != FormatArg::Kind::kString && static_cast<int>(out.size()) < width) {
    const size_t sign = (!out.empty() && (out[0] == '-' || out[0] == '+')) ? 1 : 0;
    out.insert(sign, static_cast<size_t>(width) - out.size(), '0');
  }
  if (static_cast<int>(out.size()) < width) {
    const size_t pad = static_cast<size_t>(width) - out.size();
    if (!align) align = (a.kind == FormatArg::Kind::kString || a.kind == FormatArg::Kind::kBool) ? '<' : '>';
    if (align == '<')
      out += std::string(pad, fill);
    else if (align == '>')
      out = std::string(pad, fill) + out;
    else
      out = std::string(pad / 2, fill) + out + std::string(pad - pad / 2, fill);
  }
  return out;
}

}  // namespace

std::string vformat(std::string_view fmt, const std::vector<FormatArg>& args) {
  std::string out;
  out.reserve(fmt.size() + 16 * args.size());
  size_t next = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out += '}';
      ++i;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string_view::npos) {
      out.append(fmt.substr(i));
      break;
    }
    std::string_view inner = fmt.substr(i + 1, close - i - 1);
    std::string_view spec = inner.empty() ? inner : (inner[0] == ':' ? inner.substr(1) : inner);
    // A missing argument prints the placeholder itself: a log line never throws.
    out += next < args.size() ? render(args[next], spec) : std::string(fmt.substr(i, close - i + 1));
    ++next;
    i = close;
  }
  return out;
}

}  // namespace sftgo
