#include "sftgo/core/error.h"

#include <cstring>

namespace sftgo {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kUsage: return "usage";
    case ErrorKind::kConfig: return "config";
    case ErrorKind::kIo: return "io";
    case ErrorKind::kFormat: return "format";
    case ErrorKind::kTokenizer: return "tokenizer";
    case ErrorKind::kData: return "data";
    case ErrorKind::kModel: return "model";
    case ErrorKind::kNumeric: return "numeric";
    case ErrorKind::kDist: return "distributed";
    case ErrorKind::kInternal: return "internal";
  }
  return "unknown";
}

static std::string compose(const std::string& message, const std::string& hint) {
  return hint.empty() ? message : message + " (hint: " + hint + ")";
}

Error::Error(ErrorKind kind, std::string message, std::string hint, std::string where)
    : std::runtime_error(compose(message, hint)),
      kind_(kind),
      message_(std::move(message)),
      hint_(std::move(hint)),
      where_(std::move(where)) {}

namespace detail {
[[noreturn]] void raise(ErrorKind kind, const char* file, int line, std::string message, std::string hint) {
  // Keep the path from "src/" on so locations read the same on every machine.
  const char* rel = std::strstr(file, "src/");
  if (rel == nullptr) rel = std::strstr(file, "include/");
  std::string where = std::string(rel ? rel : file) + ":" + std::to_string(line);
  throw Error(kind, std::move(message), std::move(hint), std::move(where));
}
}  // namespace detail

}  // namespace sftgo
