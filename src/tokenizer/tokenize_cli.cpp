#include "sftgo/tokenizer/tokenize_cli.h"

#include <charconv>
#include <istream>
#include <nlohmann/json.hpp>
#include <ostream>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo {
namespace {

using Json = nlohmann::json;

// Reads lines in large blocks through the stream buffer: no per-character locking or syncing.
class LineReader {
 public:
  explicit LineReader(std::istream& in) : buf_(in.rdbuf()) {}
  bool next(std::string& line) {
    line.clear();
    while (true) {
      size_t nl = data_.find('\n', pos_);
      if (nl != std::string::npos) {
        line.append(data_, pos_, nl - pos_);
        pos_ = nl + 1;
        break;
      }
      line.append(data_, pos_, std::string::npos);
      data_.clear();
      pos_ = 0;
      if (!fill()) {
        if (line.empty()) return false;
        break;
      }
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }

 private:
  bool fill() {
    if (!buf_) return false;
    data_.resize(1 << 20);
    const std::streamsize got = buf_->sgetn(data_.data(), static_cast<std::streamsize>(data_.size()));
    data_.resize(got > 0 ? static_cast<size_t>(got) : 0);
    return got > 0;
  }
  std::streambuf* buf_;
  std::string data_;
  size_t pos_ = 0;
};

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

void append_int(std::string& out, long long v) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, res.ptr);
}

Json parse_line(const std::string& line, size_t line_no, const char* expected) {
  SFTGO_CHECK(line.find_first_not_of(" \t") != std::string::npos, ErrorKind::kFormat, "stdin line ", line_no,
              ": empty line; expected ", expected);
  try {
    return Json::parse(line);
  } catch (const Json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, "stdin line ", line_no, ": not valid JSON (", e.what(), "); expected ", expected,
               ", got \"", excerpt(line), "\"");
  }
}

}  // namespace

int run_tokenize_cli(const TokenizeCliOptions& opts, std::istream& in, std::ostream& out) {
  const Tokenizer tok = Tokenizer::load(opts.tokenizer_path);
  std::optional<TokenId> bos;
  if (opts.add_bos) {
    bos = tok.bos_id();
    SFTGO_CHECK(bos, ErrorKind::kTokenizer, "--add-bos: ", tok.source_path(), " has no bos token");
  }
  const SpecialTokens mode = opts.ordinary ? SpecialTokens::kOrdinary : SpecialTokens::kMatch;
  static constexpr const char* kTextLine = "a JSON object {\"text\": string}";
  static constexpr const char* kIdsLine = "a JSON object {\"ids\": [integer, ...]}";

  LineReader reader(in);
  std::string line, buf;
  buf.reserve(1 << 20);
  std::vector<TokenId> ids;
  size_t line_no = 0;
  while (reader.next(line)) {
    ++line_no;
    try {
      if (!opts.decode) {
        const Json j = parse_line(line, line_no, kTextLine);
        auto it = j.is_object() ? j.find("text") : j.end();
        SFTGO_CHECK(j.is_object() && it != j.end() && it->is_string(), ErrorKind::kFormat, "stdin line ", line_no,
                    ": expected ", kTextLine, ", got \"", excerpt(line), "\"");
        ids = tok.encode(it->get_ref<const std::string&>(), mode);
        buf += "{\"ids\":[";
        if (bos) {
          append_int(buf, *bos);
          if (!ids.empty()) buf += ',';
        }
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) buf += ',';
          append_int(buf, ids[i]);
        }
        buf += "]}\n";
      } else {
        const Json j = parse_line(line, line_no, kIdsLine);
        auto it = j.is_object() ? j.find("ids") : j.end();
        SFTGO_CHECK(j.is_object() && it != j.end() && it->is_array(), ErrorKind::kFormat, "stdin line ", line_no,
                    ": expected ", kIdsLine, ", got \"", excerpt(line), "\"");
        ids.clear();
        for (const Json& v : *it) {
          SFTGO_CHECK(v.is_number_integer() && v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX,
                      ErrorKind::kFormat, "stdin line ", line_no, ": expected ", kIdsLine, ", found ", v.dump());
          ids.push_back(static_cast<TokenId>(v.get<int64_t>()));
        }
        buf += "{\"text\":";
        append_json_string(buf, tok.decode(ids));
        buf += "}\n";
      }
    } catch (const Error& e) {
      if (starts_with(e.message(), "stdin line ")) throw;
      SFTGO_FAIL_HINT(e.kind(), e.hint(), "stdin line ", line_no, ": ", e.message());
    }
    if (buf.size() >= (1 << 20)) {
      out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
      buf.clear();
    }
  }
  out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
  out.flush();
  SFTGO_CHECK(out.good(), ErrorKind::kIo, "could not write the output (stdout closed?)");
  return 0;
}

}  // namespace sftgo
