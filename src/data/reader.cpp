// LIMA / Alpaca / chat / ShareGPT readers. JSONL is streamed line by line; a JSON array is read whole.
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

// ShareGPT speaker names as public SFT sets write them (FastChat's ShareGPT dumps, axolotl and
// LLaMA-Factory's sharegpt type). Tool/function turns have no place in sftgo's templates.
bool parse_sharegpt_role(const std::string& s, Role& role) {
  if (s == "human" || s == "user")
    role = Role::kUser;
  else if (s == "gpt" || s == "assistant" || s == "chatgpt" || s == "bing" || s == "bard")
    role = Role::kAssistant;
  else if (s == "system")
    role = Role::kSystem;
  else
    return false;
  return true;
}

// 'conversations' holds strings in LIMA and {from, value} objects in ShareGPT: the first element
// decides (an empty or odd list stays LIMA, whose checks then name the problem).
DataFormat detect_format(const json& obj) {
  auto conv = obj.find("conversations");
  if (conv != obj.end()) {
    if (conv->is_array() && !conv->empty() && conv->front().is_object()) return DataFormat::kShareGpt;
    return DataFormat::kLima;
  }
  if (obj.contains("messages")) return DataFormat::kChat;
  if (obj.contains("instruction")) return DataFormat::kAlpaca;
  bad("cannot tell the format: expected a 'conversations' (LIMA: strings; ShareGPT: {from, value} objects), "
      "'messages' (chat) or 'instruction' (Alpaca) key");
}

// One ShareGPT turn: {"from": ..., "value": ...}, or {"role": ..., "content": ...} as some exports write it.
Message sharegpt_turn(const json& t, size_t i) {
  if (!t.is_object())
    bad(detail::concat(
        "conversations[", i, "] must be an object with 'from' and 'value', got ", type_name(t),
        t.is_string() ? " (a list of strings is the LIMA format: set data.format to lima or auto)" : ""));
  const char* role_key = t.contains("from") ? "from" : t.contains("role") ? "role" : nullptr;
  if (!role_key) bad(detail::concat("conversations[", i, "] has no 'from' (or 'role') key"));
  const json& r = t[role_key];
  if (!r.is_string()) bad(detail::concat("conversations[", i, "].", role_key, " must be a string, got ", type_name(r)));
  Message msg;
  if (!parse_sharegpt_role(r.get_ref<const std::string&>(), msg.role))
    bad(detail::concat("conversations[", i, "].", role_key, " is '", excerpt(r.get_ref<const std::string&>(), 20),
                       "'; expected human, user, gpt, assistant, chatgpt, bing, bard or system"));
  const char* content_key = t.contains("value") ? "value" : t.contains("content") ? "content" : nullptr;
  if (!content_key) bad(detail::concat("conversations[", i, "] has no 'value' (or 'content') key"));
  const json& c = t[content_key];
  if (!c.is_string())
    bad(detail::concat("conversations[", i, "].", content_key, " must be a string, got ", type_name(c)));
  msg.content = c.get<std::string>();
  return msg;
}

void convert_sharegpt(const json& obj, Conversation& conv) {
  auto it = obj.find("conversations");
  if (it == obj.end()) bad("missing field 'conversations'");
  if (!it->is_array())
    bad(detail::concat("'conversations' must be an array of {from, value} objects, got ", type_name(*it)));
  // LLaMA-Factory's sharegpt type may carry the system prompt beside the turns.
  auto sys = obj.find("system");
  if (sys != obj.end() && !sys->is_null()) {
    if (!sys->is_string()) bad(detail::concat("field 'system' must be a string, got ", type_name(*sys)));
    if (!py_strip(sys->get_ref<const std::string&>()).empty())
      conv.messages.push_back({Role::kSystem, sys->get<std::string>()});
  }
  const bool top_system = !conv.messages.empty();
  for (size_t i = 0; i < it->size(); ++i) {
    Message msg = sharegpt_turn((*it)[i], i);
    if (top_system && msg.role == Role::kSystem)
      bad(detail::concat("conversations[", i,
                         "] is a system turn, but the record also has a 'system' field; keep one"));
    conv.messages.push_back(std::move(msg));
  }
}

// Checks shared by every format: at least one response, none empty, and the last turn is one.
void check_conversation(const Conversation& conv) {
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
        if (!turn.is_string())
          bad(detail::concat("conversations[", i, "] must be a string, got ", type_name(turn),
                             turn.is_object()
                                 ? " (a list of {from, value} objects is ShareGPT: set data.format to sharegpt or auto)"
                                 : ""));
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
    case DataFormat::kShareGpt:
      convert_sharegpt(obj, conv);
      break;
    case DataFormat::kAuto: SFTGO_FAIL(ErrorKind::kInternal, "convert() needs a concrete format");
  }
  check_conversation(conv);
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
      DataFormat format = stats_.format;
      if (format == DataFormat::kAuto) {
        if (!obj.is_object()) bad(detail::concat("expected a JSON object, got ", type_name(obj)));
        format = detect_format(obj);
      }
      Conversation conv = convert(obj, format);
      // The first good record fixes the format, so a skipped bad first record cannot pick it.
      stats_.format = format;
      conv.source = {path_, line};
      ++stats_.records;
      sink_(std::move(conv));
    } catch (const BadRecord& e) {
      std::string where = detail::concat(path_, ":", line);
      if (on_bad_ == OnBadRecord::kStop) {
        SFTGO_FAIL_HINT(ErrorKind::kData, "fix the record, or set on_bad_record: skip to skip bad records", where, ": ",
                        e.what);
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

// Parses one record's JSON text. Every nlohmann error becomes a BadRecord: a number outside double
// range (1e999999) is json::out_of_range, not a parse_error, and must not escape as an internal error.
json parse_record(std::string_view text, const char* unit) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    bad(detail::concat("malformed JSON at column ", e.byte, ": ", e.what()));
  } catch (const json::out_of_range& e) {
    bad(detail::concat("number out of range in this ", unit,
                       " (JSON numbers must fit a 64-bit float): ", excerpt(e.what(), 120)));
  } catch (const json::exception& e) {
    bad(detail::concat("cannot read this ", unit, ": ", excerpt(e.what(), 120)));
  }
}

json parse_line(std::string_view line) {
  size_t bad_byte = find_invalid_utf8(line);
  if (bad_byte != std::string::npos) bad(detail::concat("invalid UTF-8 at byte ", bad_byte + 1, " of the line"));
  return parse_record(line, "line");
}

int64_t line_of(std::string_view text, size_t offset) {
  int64_t line = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) line += text[i] == '\n';
  return line;
}

// Byte ranges [begin, end) of the top-level elements of a JSON array: begin gives each element's
// line number, and the ranges let elements be parsed one by one when the whole array cannot be.
struct Span {
  size_t begin = 0, end = 0;
};
std::vector<Span> array_element_spans(std::string_view text) {
  std::vector<Span> spans;
  int depth = 0;
  bool in_string = false, escape = false, expect_element = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escape)
        escape = false;
      else if (c == '\\')
        escape = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (depth == 1 && expect_element && c != ']') {
      spans.push_back({i, text.size()});
      expect_element = false;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      ++depth;
      if (depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') {
      --depth;
      if (depth == 0 && c == ']' && !spans.empty() && spans.back().end == text.size()) spans.back().end = i;
    } else if (c == ',' && depth == 1) {
      if (!spans.empty() && spans.back().end == text.size()) spans.back().end = i;
      expect_element = true;
    }
  }
  return spans;
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
  if (name == "sharegpt") return DataFormat::kShareGpt;
  SFTGO_FAIL(ErrorKind::kConfig, "unknown data format '", name, "'; expected auto, lima, alpaca, chat or sharegpt");
}

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::kAuto: return "auto";
    case DataFormat::kLima: return "lima";
    case DataFormat::kAlpaca: return "alpaca";
    case DataFormat::kChat: return "chat";
    case DataFormat::kShareGpt: return "sharegpt";
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
    bool per_element = false;
    try {
      arr = json::parse(text);
    } catch (const json::parse_error& e) {
      size_t at = e.byte > 0 ? e.byte - 1 : 0;
      SFTGO_FAIL(ErrorKind::kData, path, ":", line_of(text, at), ": malformed JSON array: ", e.what());
    } catch (const json::exception&) {
      // Valid syntax up to a value nlohmann cannot hold (a number outside double range): parse the
      // elements one by one so the bad one is named by its line and obeys on_bad_record.
      per_element = true;
    }
    std::vector<Span> spans = array_element_spans(text);
    // Line numbers advance incrementally, so this stays linear in the file size.
    int64_t line = 1;
    size_t scanned = 0;
    const size_t n = per_element ? spans.size() : arr.size();
    for (size_t i = 0; i < n; ++i) {
      if (i < spans.size()) {
        for (; scanned < spans[i].begin; ++scanned) line += text[scanned] == '\n';
      }
      if (per_element) {
        std::string_view element = std::string_view(text).substr(spans[i].begin, spans[i].end - spans[i].begin);
        records.record(line, [&] { return parse_record(element, "array element"); });
      } else {
        records.record(line, [&] { return std::move(arr[i]); });
      }
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

std::string to_messages_json(const Conversation& conv) {
  using ordered = nlohmann::ordered_json;  // "role" before "content", as people write them
  ordered messages = ordered::array();
  bool input_placed = conv.input.empty();
  for (const Message& m : conv.messages) {
    std::string content = m.content;
    if (!input_placed && m.role == Role::kUser) {
      content += "\n\n" + conv.input;  // what apply_template does for every template but alpaca
      input_placed = true;
    }
    messages.push_back({{"role", role_name(m.role)}, {"content", std::move(content)}});
  }
  ordered record = {{"messages", std::move(messages)}};
  // Content was checked to be valid UTF-8 on the way in, so strict dumping cannot throw.
  return record.dump(-1, ' ', false, ordered::error_handler_t::strict);
}

std::vector<Conversation> read_all_conversations(const std::string& path, DataFormat format, OnBadRecord on_bad,
                                                 ReadStats* stats) {
  std::vector<Conversation> out;
  ReadStats s = read_conversations(path, format, on_bad, [&](Conversation&& c) { out.push_back(std::move(c)); });
  if (stats) *stats = std::move(s);
  return out;
}

}  // namespace sftgo::data
