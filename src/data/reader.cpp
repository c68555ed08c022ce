// LIMA / Alpaca / chat readers. JSONL is streamed line by line; a JSON array is read whole.
#include <nlohmann/json.hpp>

#include <fstream>
#include <string_view>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/data/conversation.h"
#include "sftgo/data/template.h"

namespace sftgo::data {
namespace {

using json = nlohmann::json;

// A record-level problem: with on_bad_record=skip it is counted, with stop it becomes an Error.
struct BadRecord {
  std::string what;
};

[[noreturn]] void bad(std::string what) { throw BadRecord{std::move(what)}; }

const char* type_name(const json& j) { return j.type_name(); }

const std::string& get_string(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) bad(detail::concat("missing field '", key, "'", where));
  if (!it->is_string()) bad(detail::concat("field '", key, "'", where, " must be a string, got ", type_name(*it)));
  return it->get_ref<const std::string&>();
}

Role parse_role(const json& r, size_t i) {
  if (!r.is_string()) bad(detail::concat("messages[", i, "].role must be a string, got ", type_name(r)));
  const auto& s = r.get_ref<const std::string&>();
  if (s == "system") return Role::kSystem;
  if (s == "user") return Role::kUser;
  if (s == "assistant") return Role::kAssistant;
  bad(detail::concat("messages[", i, "].role is '", excerpt(s, 20), "'; expected system, user or assistant"));
}

DataFormat detect_format(const json& obj) {
  if (obj.contains("conversations")) return DataFormat::kLima;
  if (obj.contains("messages")) return DataFormat::kChat;
  if (obj.contains("instruction")) return DataFormat::kAlpaca;
  bad("cannot tell the format: expected a 'conversations' (LIMA), 'messages' (chat) or 'instruction' (Alpaca) key");
}

Conversation convert(const json& obj, DataFormat format) {
  if (!obj.is_object()) bad(detail::concat("expected a JSON object, got ", type_name(obj)));
  Conversation conv;
  switch (format) {
    case DataFormat::kLima: {
      auto it = obj.find("conversations");
      if (it == obj.end()) bad("missing field 'conversations'");
      if (!it->is_array()) bad(detail::concat("'conversations' must be an array of strings, got ", type_name(*it)));
      // LIMA alternates user, assistant, user, ... starting with the user.
      for (size_t i = 0; i < it->size(); ++i) {
        const json& turn = (*it)[i];
        if (!turn.is_string()) bad(detail::concat("conversations[", i, "] must be a string, got ", type_name(turn)));
        conv.messages.push_back({i % 2 == 0 ? Role::kUser : Role::kAssistant, turn.get<std::string>()});
      }
      break;
    }
    case DataFormat::kAlpaca: {
      const std::string& instruction = get_string(obj, "instruction", "");
      if (py_strip(instruction).empty()) bad("field 'instruction' is empty");
      auto in = obj.find("input");
      if (in != obj.end() && !in->is_null()) {
        if (!in->is_string()) bad(detail::concat("field 'input' must be a string, got ", type_name(*in)));
        conv.input = in->get<std::string>();
      }
      conv.messages.push_back({Role::kUser, instruction});
      conv.messages.push_back({Role::kAssistant, get_string(obj, "output", "")});
      break;
    }
    case DataFormat::kChat: {
      auto it = obj.find("messages");
      if (it == obj.end()) bad("missing field 'messages'");
      if (!it->is_array()) bad(detail::concat("'messages' must be an array, got ", type_name(*it)));
      for (size_t i = 0; i < it->size(); ++i) {
        const json& m = (*it)[i];
        if (!m.is_object()) bad(detail::concat("messages[", i, "] must be an object, got ", type_name(m)));
        auto role = m.find("role");
        if (role == m.end()) bad(detail::concat("messages[", i, "] has no 'role'"));
        Message msg{parse_role(*role, i), ""};
        msg.content = get_string(m, "content", detail::concat(" in messages[", i, "]"));
        conv.messages.push_back(std::move(msg));
      }
      break;
    }
    case DataFormat::kAuto:
      SFTGO_FAIL(ErrorKind::kInternal, "convert() needs a concrete format");
  }
  // Checks shared by every format.
  bool any_assistant = false;
  for (size_t i = 0; i < conv.messages.size(); ++i) {
    const Message& m = conv.messages[i];
    if (m.role != Role::kAssistant) continue;
    any_assistant = true;
    if (py_strip(m.content).empty()) bad(detail::concat("empty response (assistant message ", i, ")"));
  }
  if (conv.messages.empty()) bad("no messages");
  if (!any_assistant) bad("no assistant message (nothing to train on)");
  if (conv.messages.back().role != Role::kAssistant)
    bad(detail::concat("the last message is from the ", role_name(conv.messages.back().role),
                       "; a conversation must end with an assistant message"));
  return conv;
}

// Reads records and applies the bad-record policy in one place.
class RecordSink {
 public:
  RecordSink(const std::string& path, DataFormat format, OnBadRecord on_bad,
             const std::function<void(Conversation&&)>& sink)
      : path_(path), on_bad_(on_bad), sink_(sink) {
    stats_.format = format;
  }

  // `parse` produces the JSON value of the record or throws BadRecord.
  template <typename Parse>
  void record(int64_t line, Parse&& parse) {
    try {
      json obj = parse();
      if (stats_.format == DataFormat::kAuto) {
        if (!obj.is_object()) bad(detail::concat("expected a JSON object, got ", type_name(obj)));
        stats_.format = detect_format(obj);
      }
      Conversation conv = convert(obj, stats_.format);
      conv.source = {path_, line};
      ++stats_.records;
      sink_(std::move(conv));
    } catch (const BadRecord& e) {
      std::string where = detail::concat(path_, ":", line);
      if (on_bad_ == OnBadRecord::kStop) {
        SFTGO_FAIL_HINT(ErrorKind::kData, "fix the record, or set on_bad_record: skip to skip bad records",
                        where, ": ", e.what);
      }
      ++stats_.bad;
      if (stats_.bad_reasons.size() < ReadStats::kMaxBadReasons) {
        stats_.bad_reasons.push_back(where + ": " + e.what);
        log_warn("skipping bad record {}: {}", where, e.what);
      }
    }
  }
  ReadStats& stats() { return stats_; }

 private:
  std::string path_;
  OnBadRecord on_bad_;
  const std::function<void(Conversation&&)>& sink_;
  ReadStats stats_;
};

json parse_line(std::string_view line) {
  size_t bad_byte = find_invalid_utf8(line);
  if (bad_byte != std::string::npos) bad(detail::concat("invalid UTF-8 at byte ", bad_byte + 1, " of the line"));
  try {
    return json::parse(line);
  } catch (const json::parse_error& e) {
    bad(detail::concat("malformed JSON at column ", e.byte, ": ", e.what()));
  }
}

int64_t line_of(std::string_view text, size_t offset) {
  int64_t line = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) line += text[i] == '\n';
  return line;
}

// Byte offsets where each top-level element of a JSON array starts (used only for line numbers).
std::vector<size_t> array_element_offsets(std::string_view text) {
  std::vector<size_t> starts;
  int depth = 0;
  bool in_string = false, escape = false, expect_element = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (depth == 1 && expect_element && c != ']') {
      starts.push_back(i);
      expect_element = false;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      ++depth;
      if (depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') --depth;
    else if (c == ',' && depth == 1) expect_element = true;
  }
  return starts;
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
  }
  return "?";
}

DataFormat parse_data_format(const std::string& name) {
  if (name == "auto") return DataFormat::kAuto;
  if (name == "lima") return DataFormat::kLima;
  if (name == "alpaca") return DataFormat::kAlpaca;
  if (name == "chat") return DataFormat::kChat;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown data format '", name, "'; expected auto, lima, alpaca or chat");
}

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::kAuto: return "auto";
    case DataFormat::kLima: return "lima";
    case DataFormat::kAlpaca: return "alpaca";
    case DataFormat::kChat: return "chat";
  }
  return "?";
}

OnBadRecord parse_on_bad_record(const std::string& name) {
  if (name == "stop") return OnBadRecord::kStop;
  if (name == "skip") return OnBadRecord::kSkip;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown on_bad_record '", name, "'; expected stop or skip");
}

ReadStats read_conversations(const std::string& path, DataFormat format, OnBadRecord on_bad,
                             const std::function<void(Conversation&&)>& sink) {
  std::ifstream in(path, std::ios::binary);
  SFTGO_CHECK_HINT(in.good(), ErrorKind::kIo, "check the data path in the config", "cannot open data file ", path);
  RecordSink records(path, format, on_bad, sink);

  // Peek at the first non-blank byte (after a UTF-8 BOM) to tell a JSON array from JSONL.
  char first = 0;
  {
    char c;
    int64_t pos = 0;
    while (in.get(c)) {
      bool bom = pos < 3 && (static_cast<unsigned char>(c) == 0xEF || static_cast<unsigned char>(c) == 0xBB ||
                             static_cast<unsigned char>(c) == 0xBF);
      ++pos;
      if (bom || c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
      first = c;
      break;
    }
    in.clear();
    in.seekg(0);
  }

  if (first == '[') {
    in.close();
    std::string text = read_file(path);
    size_t invalid = find_invalid_utf8(text);
    if (invalid != std::string::npos) {
      // Whole-file formats cannot skip a record they cannot even parse.
      SFTGO_FAIL(ErrorKind::kData, path, ":", line_of(text, invalid), ": invalid UTF-8 (byte offset ", invalid, ")");
    }
    json arr;
    try {
      arr = json::parse(text);
    } catch (const json::parse_error& e) {
      size_t at = e.byte > 0 ? e.byte - 1 : 0;
      SFTGO_FAIL(ErrorKind::kData, path, ":", line_of(text, at), ": malformed JSON array: ", e.what());
    }
    std::vector<size_t> starts = array_element_offsets(text);
    // Line numbers advance incrementally, so this stays linear in the file size.
    int64_t line = 1;
    size_t scanned = 0;
    for (size_t i = 0; i < arr.size(); ++i) {
      if (i < starts.size()) {
        for (; scanned < starts[i]; ++scanned) line += text[scanned] == '\n';
      }
      records.record(line, [&] { return std::move(arr[i]); });
    }
    return records.stats();
  }

  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::string_view view(line);
    if (line_no == 1 && view.size() >= 3 && view.substr(0, 3) == "\xEF\xBB\xBF") view.remove_prefix(3);
    if (!view.empty() && view.back() == '\r') view.remove_suffix(1);
    if (view.find_first_not_of(" \t") == std::string_view::npos) continue;  // blank lines are allowed
    records.record(line_no, [&] { return parse_line(view); });
  }
  SFTGO_CHECK(!in.bad(), ErrorKind::kIo, "read error in ", path, " after line ", line_no);
  return records.stats();
}

std::vector<Conversation> read_all_conversations(const std::string& path, DataFormat format, OnBadRecord on_bad,
                                                 ReadStats* stats) {
  std::vector<Conversation> out;
  ReadStats s = read_conversations(path, format, on_bad, [&](Conversation&& c) { out.push_back(std::move(c)); });
  if (stats) *stats = std::move(s);
  return out;
}

}  // namespace sftgo::data
