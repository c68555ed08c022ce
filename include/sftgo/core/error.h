// Typed errors with the source location of the check and a one-line hint for the user.
// Every user-facing failure in sftgo is an sftgo::Error: the app prints what() and exits non-zero.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sftgo {

// What went wrong, coarsely; the app maps kinds to exit codes and tests assert on them.
enum class ErrorKind { kUsage, kConfig, kIo, kFormat, kTokenizer, kData, kModel, kNumeric, kDist, kInternal };

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, std::string hint, std::string where);
  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }
  // "src/file.cpp:123" of the check that fired; for bug reports, not for users.
  const std::string& where() const { return where_; }

 private:
  ErrorKind kind_;
  std::string message_;
  std::string hint_;
  std::string where_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
[[noreturn]] void raise(ErrorKind kind, const char* file, int line, std::string message, std::string hint);
}  // namespace detail

}  // namespace sftgo

// SFTGO_CHECK(cond, kind, parts...): throws sftgo::Error(kind, concat(parts...)) when cond is false.
#define SFTGO_CHECK(cond, kind, ...)                                                                \
  do {                                                                                              \
    if (!(cond)) [[unlikely]]                                                                       \
      ::sftgo::detail::raise((kind), __FILE__, __LINE__, ::sftgo::detail::concat(__VA_ARGS__), ""); \
  } while (0)

// As SFTGO_CHECK with a hint: a short sentence telling the user what to do about it.
#define SFTGO_CHECK_HINT(cond, kind, hint, ...)                                                         \
  do {                                                                                                  \
    if (!(cond)) [[unlikely]]                                                                           \
      ::sftgo::detail::raise((kind), __FILE__, __LINE__, ::sftgo::detail::concat(__VA_ARGS__), (hint)); \
  } while (0)

#define SFTGO_FAIL(kind, ...) \
  ::sftgo::detail::raise((kind), __FILE__, __LINE__, ::sftgo::detail::concat(__VA_ARGS__), "")

#define SFTGO_FAIL_HINT(kind, hint, ...) \
  ::sftgo::detail::raise((kind), __FILE__, __LINE__, ::sftgo::detail::concat(__VA_ARGS__), (hint))
