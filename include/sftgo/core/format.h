// sftgo::format(fmt, args...): {fmt}'s syntax ("{}", "{0}", "{:>8.3f}", "{{"), rendered by {fmt} itself
// (Debian's libfmt, the copy spdlog is built with) in format.cpp. A bad placeholder or spec (a missing
// argument, "{:.2f}" on an integer, mixed "{}" and "{0}") throws sftgo::Error(kInternal).
// Doubles without a type print as printf's %g ("34.7436"), not fmt's shortest form.
// This header stays free of fmt on purpose: every LibTorch target has torch's include directory on its
// path, and that directory holds LibTorch's own, newer fmt (12.x), which would shadow Debian's fmt 9
// headers while Debian's library is linked. Arguments are captured here and formatted in one
// LibTorch-free translation unit. Why not LibTorch's fmt for everything: Debian's spdlog 1.10 does not
// compile against fmt 12 (docs/architecture.md, "Three traps of the PyPI LibTorch").
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace sftgo {

struct FormatArg {
  enum class Kind { kInt, kUint, kDouble, kString, kBool };
  Kind kind = Kind::kString;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  std::string s;
};

std::string vformat(std::string_view fmt, const std::vector<FormatArg>& args);

namespace detail {
template <typename T>
FormatArg to_format_arg(const T& v) {
  using D = std::decay_t<T>;
  FormatArg a;
  if constexpr (std::is_same_v<D, bool>) {
    a.kind = FormatArg::Kind::kBool;
    a.i = v ? 1 : 0;
  } else if constexpr (std::is_integral_v<D> && std::is_signed_v<D>) {
    a.kind = FormatArg::Kind::kInt;
    a.i = static_cast<int64_t>(v);
  } else if constexpr (std::is_integral_v<D>) {
    a.kind = FormatArg::Kind::kUint;
    a.u = static_cast<uint64_t>(v);
  } else if constexpr (std::is_floating_point_v<D>) {
    a.kind = FormatArg::Kind::kDouble;
    a.d = static_cast<double>(v);
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    a.s = std::string(std::string_view(v));
  } else {
    std::ostringstream os;
    os << v;
    a.s = os.str();
  }
  return a;
}
}  // namespace detail

template <typename... Args>
std::string format(std::string_view fmt, const Args&... args) {
  return vformat(fmt, std::vector<FormatArg>{detail::to_format_arg(args)...});
}

}  // namespace sftgo
