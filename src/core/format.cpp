// sftgo::vformat hands the captured arguments to {fmt} (Debian's libfmt, the copy spdlog is built
// with), so every placeholder, positional index and spec follows fmt's documented syntax and a bad
// one is an error. This file is the only one that includes fmt: it is compiled in sftgo_core, which
// has no LibTorch include directory, so <fmt/...> is Debian's and matches the linked library.
#include "sftgo/core/format.h"

#include <fmt/args.h>
#include <fmt/format.h>

#include "sftgo/core/error.h"

namespace sftgo {
namespace {

// A double whose default presentation is printf's %g with precision 6 ("34.7436", "1e-05"), as
// sftgo's messages have always printed doubles; fmt's own default is the shortest round-trip form
// ("0.30000000000000004"). An explicit type or precision ({:.2f}, {:e}, {:.3}) goes to fmt as written.
struct GeneralDouble {
  double value;
};

}  // namespace
}  // namespace sftgo

template <>
struct fmt::formatter<sftgo::GeneralDouble> : fmt::formatter<double> {
  std::string spec_;  // kept alive: the base formatter may keep views into it

  auto parse(fmt::format_parse_context& ctx) -> decltype(ctx.begin()) {
    auto it = ctx.begin();
    auto end = it;
    while (end != ctx.end() && *end != '}' && *end != '{') ++end;
    if (end != ctx.end() && *end == '{') return fmt::formatter<double>::parse(ctx);  // dynamic width
    spec_.assign(it, end);
    const bool has_type = !spec_.empty() && std::string_view("aAeEfFgG%").find(spec_.back()) != std::string_view::npos;
    if (has_type) return fmt::formatter<double>::parse(ctx);
    if (spec_.find('.') == std::string::npos) spec_ += ".6";
    spec_ += "g}";
    fmt::format_parse_context sub(spec_);
    fmt::formatter<double>::parse(sub);
    return end;
  }
  auto format(sftgo::GeneralDouble d, fmt::format_context& ctx) const -> decltype(ctx.out()) {
    return fmt::formatter<double>::format(d.value, ctx);
  }
};

namespace sftgo {

std::string vformat(std::string_view fmt_str, const std::vector<FormatArg>& args) {
  fmt::dynamic_format_arg_store<fmt::format_context> store;
  store.reserve(args.size(), 0);
  for (const FormatArg& a : args) {
    switch (a.kind) {
      case FormatArg::Kind::kBool: store.push_back(a.i != 0); break;
      case FormatArg::Kind::kInt: store.push_back(a.i); break;
      case FormatArg::Kind::kUint: store.push_back(a.u); break;
      case FormatArg::Kind::kDouble: store.push_back(GeneralDouble{a.d}); break;
      case FormatArg::Kind::kString: store.push_back(fmt::string_view(a.s)); break;
    }
  }
  try {
    return fmt::vformat(fmt::string_view(fmt_str.data(), fmt_str.size()), store);
  } catch (const fmt::format_error& e) {
    // A programming error in sftgo, not in the user's input: say which string and why.
    SFTGO_FAIL(ErrorKind::kInternal, "bad format string \"", fmt_str, "\" with ", args.size(),
               " argument(s): ", e.what());
  }
}

}  // namespace sftgo
