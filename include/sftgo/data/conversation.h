// Readers for the SFT data formats: LIMA, Alpaca, chat JSONL and ShareGPT, all turned into one
// Conversation type that remembers where it came from (file:line) for error messages. No LibTorch.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sftgo::data {

enum class Role : uint8_t { kSystem, kUser, kAssistant };
const char* role_name(Role role);  // "system" | "user" | "assistant"

struct Message {
  Role role = Role::kUser;
  std::string content;
};

// Where a record came from; line is 1-based (for a JSON array: the line where the element starts).
struct SourceRef {
  std::string file;
  int64_t line = 0;
};

struct Conversation {
  std::vector<Message> messages;
  // Alpaca `input` (context for the instruction). The alpaca template prints it under "### Input:";
  // every other template appends it to the first user message after a blank line.
  std::string input;
  SourceRef source;
};

enum class DataFormat { kAuto, kLima, kAlpaca, kChat, kShareGpt };
DataFormat parse_data_format(const std::string& name);  // "auto" | "lima" | "alpaca" | "chat" | "sharegpt"
const char* data_format_name(DataFormat format);

// stop: the first bad record throws sftgo::Error(kData) naming file:line and the problem.
// skip: bad records are counted, the first few reasons are logged, reading goes on.
enum class OnBadRecord { kStop, kSkip };
OnBadRecord parse_on_bad_record(const std::string& name);  // "stop" | "skip"

struct ReadStats {
  int64_t records = 0;                    // conversations delivered
  int64_t bad = 0;                        // records skipped (only with OnBadRecord::kSkip)
  DataFormat format = DataFormat::kAuto;  // the format the file was read as
  std::vector<std::string> bad_reasons;   // "file:line: what", the first kMaxBadReasons
  static constexpr size_t kMaxBadReasons = 10;
};

// Streams the records of `path` to `sink` one at a time. JSONL is read line by line (never the
// whole file); a file whose first non-blank byte is '[' is a JSON array (Alpaca) and is read whole.
// kAuto picks the format from the first good record's keys ("conversations" holding strings: LIMA,
// holding objects: ShareGPT | "instruction" | "messages") and then holds every record to it.
// Validation (all formats): content must be a string of valid UTF-8; roles are system/user/assistant
// (ShareGPT's speaker names map onto them, docs/data.md); at least one assistant message; no
// assistant message empty after trimming; the conversation ends with an assistant message. A record
// that is not valid JSON, or holds a number outside double range, is a bad record like any other.
ReadStats read_conversations(const std::string& path, DataFormat format, OnBadRecord on_bad,
                             const std::function<void(Conversation&&)>& sink);

// The conversation as one `messages` JSONL record, {"messages": [{"role": ..., "content": ...}, ...]}
// without a newline. An Alpaca `input` is appended to the first user message after a blank line, as
// every template but alpaca does, so reading the line back as format chat gives the same tokens.
std::string to_messages_json(const Conversation& conv);

// Convenience: everything in memory.
std::vector<Conversation> read_all_conversations(const std::string& path, DataFormat format = DataFormat::kAuto,
                                                 OnBadRecord on_bad = OnBadRecord::kStop, ReadStats* stats = nullptr);

}  // namespace sftgo::data
