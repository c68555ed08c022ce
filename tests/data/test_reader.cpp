#include <gtest/gtest.h>
#include <unistd.h>

#include "sftgo/core/error.h"
#include "sftgo/data/conversation.h"
#include "sftgo/data/dataset.h"
#include "test_util.h"

namespace sftgo::data {
namespace {

using testing::TempDir;

// Runs `fn` expecting sftgo::Error(kData) whose message contains every one of `parts`.
template <typename Fn>
void expect_data_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    FAIL() << "expected an sftgo::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kData) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(e.message().find(p), std::string::npos) << "'" << p << "' not in: " << e.message();
  }
}

TEST(DataReader, LimaAlternatesUserAndAssistant) {
  TempDir dir;
  auto path = dir.write("lima.jsonl", R"({"conversations": ["Hi?", "Hello!"], "source": "stackexchange"})"
                                      "\n"
                                      R"({"conversations": ["a", "b", "c", "d"]})"
                                      "\n");
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kAuto, OnBadRecord::kStop, &stats);
  ASSERT_EQ(convs.size(), 2u);
  EXPECT_EQ(stats.format, DataFormat::kLima);
  EXPECT_EQ(convs[0].messages[0].role, Role::kUser);
  EXPECT_EQ(convs[0].messages[1].role, Role::kAssistant);
  EXPECT_EQ(convs[0].messages[1].content, "Hello!");
  ASSERT_EQ(convs[1].messages.size(), 4u);
  EXPECT_EQ(convs[1].messages[2].role, Role::kUser);
  EXPECT_EQ(convs[1].source.line, 2);
  EXPECT_EQ(convs[1].source.file, path);
}

TEST(DataReader, AlpacaJsonArrayWithLineNumbers) {
  TempDir dir;
  auto path = dir.write("alpaca.json", R"([
  {"instruction": "Add", "input": "1 and 2", "output": "3"},
  {
    "instruction": "Say hi",
    "input": "",
    "output": "hi"
  }
])");
  auto convs = read_all_conversations(path);
  ASSERT_EQ(convs.size(), 2u);
  EXPECT_EQ(convs[0].input, "1 and 2");
  EXPECT_EQ(convs[0].messages[0].content, "Add");
  EXPECT_EQ(convs[0].messages[1].content, "3");
  EXPECT_EQ(convs[0].source.line, 2);
  EXPECT_EQ(convs[1].source.line, 3);
  EXPECT_EQ(convs[1].input, "");
}

TEST(DataReader, AlpacaJsonlAndMissingInput) {
  TempDir dir;
  auto path = dir.write(
      "a.jsonl",
      "{\"instruction\": \"x\", \"output\": \"y\"}\r\n\r\n{\"instruction\": \"p\", \"input\": null, \"output\": \"q\"}\r\n");
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kAlpaca, OnBadRecord::kStop, &stats);
  ASSERT_EQ(convs.size(), 2u);
  EXPECT_EQ(convs[1].source.line, 3);  // the blank line counts
  EXPECT_EQ(convs[1].messages[1].content, "q");
}

TEST(DataReader, ChatWithSystem) {
  TempDir dir;
  auto path = dir.write(
      "c.jsonl",
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})"
      "\n");
  auto convs = read_all_conversations(path);
  ASSERT_EQ(convs.size(), 1u);
  ASSERT_EQ(convs[0].messages.size(), 3u);
  EXPECT_EQ(convs[0].messages[0].role, Role::kSystem);
  EXPECT_EQ(convs[0].messages[2].content, "4");
}

struct BadCase {
  const char* name;
  std::string line;
  std::string expect;
};

TEST(DataReader, BadRecordsNameFileLineAndProblem) {
  const std::string good = R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
  const std::vector<BadCase> cases = {
      {"malformed", R"({"messages": [)", "malformed JSON"},
      {"missing", R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]})",
       "missing field 'content'"},
      {"wrong type", R"({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]})",
       "must be a string, got number"},
      {"empty response",
       R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n"}]})",
       "empty response"},
      {"bad role", R"({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]})",
       "expected system, user or assistant"},
      {"ends with user", R"({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]})",
       "must end with an assistant"},
      {"no assistant", R"({"messages": [{"role": "user", "content": "q"}]})", "no assistant message"},
      {"not an object", R"([1, 2])", "expected a JSON object"},
      {"non-utf8",
       "{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xE9\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}",
       "invalid UTF-8"},
      {"other format", R"({"instruction": "x", "output": "y"})", "missing field 'messages'"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto path = dir.write("bad.jsonl", good + "\n" + good + "\n" + c.line + "\n" + good + "\n");
    expect_data_error([&] { read_all_conversations(path); }, {path + ":3", c.expect});
  }
}

TEST(DataReader, LimaWrongTypesAndOddTurns) {
  TempDir dir;
  auto path = dir.write("l.jsonl", R"({"conversations": ["q", 7]})"
                                   "\n");
  expect_data_error([&] { read_all_conversations(path, DataFormat::kLima); },
                    {":1", "conversations[1] must be a string"});
  path = dir.write("l2.jsonl", R"({"conversations": ["q", "a", "q2"]})"
                               "\n");
  expect_data_error([&] { read_all_conversations(path, DataFormat::kLima); }, {":1", "must end with an assistant"});
}

TEST(DataReader, AlpacaArrayErrors) {
  TempDir dir;
  auto path = dir.write(
      "a.json", "[\n {\"instruction\": \"x\", \"output\": \"y\"},\n {\"instruction\": \"x\", \"output\": \"\"}\n]");
  expect_data_error([&] { read_all_conversations(path); }, {path + ":3", "empty response"});
  path = dir.write("b.json",
                   "[\n {\"instruction\": \"x\", \"output\": \"y\"},\n {\"instruction\": \"x\" \"output\": \"\"}\n]");
  expect_data_error([&] { read_all_conversations(path); }, {path + ":3", "malformed JSON"});
}

TEST(DataReader, SkipCountsBadRecordsAndKeepsGoodOnes) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 30; ++i) {
    if (i % 3 == 0)
      text += "{not json\n";
    else
      text += R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})"
              "\n";
  }
  auto path = dir.write("s.jsonl", text);
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kChat, OnBadRecord::kSkip, &stats);
  EXPECT_EQ(convs.size(), 20u);
  EXPECT_EQ(stats.bad, 10);
  EXPECT_EQ(stats.records, 20);
  ASSERT_EQ(stats.bad_reasons.size(), ReadStats::kMaxBadReasons);
  EXPECT_NE(stats.bad_reasons[0].find(path + ":1: malformed JSON"), std::string::npos) << stats.bad_reasons[0];
}

TEST(DataReader, MissingFileIsIoError) {
  try {
    read_all_conversations("/nonexistent/x.jsonl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
}

TEST(DataReader, ParseNames) {
  EXPECT_EQ(parse_data_format("lima"), DataFormat::kLima);
  EXPECT_EQ(parse_data_format("sharegpt"), DataFormat::kShareGpt);
  EXPECT_STREQ(data_format_name(DataFormat::kShareGpt), "sharegpt");
  EXPECT_EQ(parse_on_bad_record("skip"), OnBadRecord::kSkip);
  EXPECT_THROW(parse_data_format("csv"), Error);
}

TEST(DataReader, DemoDatasetIsValidChat) {
  const std::string path = std::string(SFTGO_SOURCE_DIR) + "/data/demo/demo_sft.jsonl";
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kChat, OnBadRecord::kStop, &stats);
  EXPECT_GE(convs.size(), 300u);
  size_t multi = 0;
  for (const auto& c : convs) multi += c.messages.size() > 2;
  EXPECT_GT(multi, 10u);
}

std::string fixture(const std::string& name) { return std::string(SFTGO_SOURCE_DIR) + "/tests/data/fixtures/" + name; }

TEST(DataReader, ShareGptFromValueDetectedByAuto) {
  ReadStats stats;
  auto convs = read_all_conversations(fixture("sharegpt.jsonl"), DataFormat::kAuto, OnBadRecord::kStop, &stats);
  EXPECT_EQ(stats.format, DataFormat::kShareGpt);
  ASSERT_EQ(convs.size(), 3u);
  ASSERT_EQ(convs[0].messages.size(), 3u);
  EXPECT_EQ(convs[0].messages[0].role, Role::kSystem);
  EXPECT_EQ(convs[0].messages[1].role, Role::kUser);
  EXPECT_EQ(convs[0].messages[2].role, Role::kAssistant);
  EXPECT_EQ(convs[0].messages[2].content, "42.");
  ASSERT_EQ(convs[1].messages.size(), 4u);
  EXPECT_EQ(convs[1].messages[3].role, Role::kAssistant);  // "chatgpt"
  EXPECT_EQ(convs[1].messages[3].content, "Bonjour !");
  EXPECT_EQ(convs[1].source.line, 2);
  // A top-level "system" field (LLaMA-Factory) becomes the leading system message; "user"/"assistant" map as such.
  ASSERT_EQ(convs[2].messages.size(), 3u);
  EXPECT_EQ(convs[2].messages[0].role, Role::kSystem);
  EXPECT_EQ(convs[2].messages[0].content, "You are a calculator.");
  EXPECT_EQ(convs[2].messages[1].role, Role::kUser);
}

TEST(DataReader, ShareGptRoleContentJsonArray) {
  ReadStats stats;
  auto convs =
      read_all_conversations(fixture("sharegpt_role_content.json"), DataFormat::kAuto, OnBadRecord::kStop, &stats);
  EXPECT_EQ(stats.format, DataFormat::kShareGpt);
  ASSERT_EQ(convs.size(), 2u);
  EXPECT_EQ(convs[1].source.line, 3);
  ASSERT_EQ(convs[1].messages.size(), 3u);
  EXPECT_EQ(convs[1].messages[0].role, Role::kSystem);
  EXPECT_EQ(convs[1].messages[2].content, "Hello!");
  // The same file read with the format named explicitly.
  EXPECT_EQ(read_all_conversations(fixture("sharegpt_role_content.json"), DataFormat::kShareGpt).size(), 2u);
}

TEST(DataReader, ShareGptSpeakerNames) {
  TempDir dir;
  for (const char* assistant : {"gpt", "assistant", "chatgpt", "bing", "bard"}) {
    for (const char* user : {"human", "user"}) {
      SCOPED_TRACE(std::string(user) + "/" + assistant);
      auto path = dir.write("n.jsonl", std::string(R"({"conversations": [{"from": ")") + user +
                                           R"(", "value": "q"}, {"from": ")" + assistant + R"(", "value": "a"}]})");
      auto convs = read_all_conversations(path, DataFormat::kShareGpt);
      ASSERT_EQ(convs.size(), 1u);
      EXPECT_EQ(convs[0].messages[0].role, Role::kUser);
      EXPECT_EQ(convs[0].messages[1].role, Role::kAssistant);
    }
  }
}

TEST(DataReader, ShareGptBadRecordsNameFileLineAndProblem) {
  const std::string good = R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})";
  const std::vector<BadCase> cases = {
      {"tool turn",
       R"({"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "{}"}, {"from": "gpt", "value": "a"}]})",
       "conversations[1].from is 'tool'; expected human, user, gpt"},
      {"missing value", R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]})",
       "conversations[1] has no 'value' (or 'content') key"},
      {"missing from", R"({"conversations": [{"value": "q"}, {"from": "gpt", "value": "a"}]})",
       "conversations[0] has no 'from' (or 'role') key"},
      {"value not a string", R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": null}]})",
       "conversations[1].value must be a string, got null"},
      {"from not a string", R"({"conversations": [{"from": 1, "value": "q"}, {"from": "gpt", "value": "a"}]})",
       "conversations[0].from must be a string, got number"},
      {"a string turn", R"({"conversations": [{"from": "human", "value": "q"}, "a"]})",
       "conversations[1] must be an object with 'from' and 'value', got string (a list of strings is the LIMA format"},
      {"not an array", R"({"conversations": {"from": "human", "value": "q"}})", "'conversations' must be an array"},
      {"ends with human", R"({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]})",
       "must end with an assistant"},
      {"empty answer", R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]})",
       "empty response"},
      {"two system prompts",
       R"({"system": "s", "conversations": [{"from": "system", "value": "t"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})",
       "also has a 'system' field"},
      {"system not a string",
       R"({"system": 3, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})",
       "field 'system' must be a string"},
      {"LIMA record", R"({"conversations": ["q", "a"]})", "conversations[0] must be an object"},
      {"malformed", R"({"conversations": [{"from": "human")", "malformed JSON"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto path = dir.write("bad.jsonl", good + "\n" + good + "\n" + c.line + "\n" + good + "\n");
    expect_data_error([&] { read_all_conversations(path); }, {path + ":3", c.expect});
    // The same record in a JSON array, element 3 on line 4.
    auto arr = dir.write("bad.json", "[\n" + good + ",\n" + good + ",\n" + c.line + ",\n" + good + "\n]\n");
    if (std::string(c.name) != "malformed")
      expect_data_error([&] { read_all_conversations(arr); }, {arr + ":4", c.expect});
  }
}

TEST(DataReader, ShareGptSkipKeepsGoodRecords) {
  ReadStats stats;
  auto convs = read_all_conversations(fixture("sharegpt_bad.jsonl"), DataFormat::kAuto, OnBadRecord::kSkip, &stats);
  EXPECT_EQ(stats.format, DataFormat::kShareGpt);
  EXPECT_EQ(convs.size(), 2u);
  EXPECT_EQ(stats.bad, 2);
  ASSERT_EQ(stats.bad_reasons.size(), 2u);
  EXPECT_NE(stats.bad_reasons[0].find("sharegpt_bad.jsonl:2: conversations[1].from is 'tool'"), std::string::npos)
      << stats.bad_reasons[0];
  EXPECT_NE(stats.bad_reasons[1].find("sharegpt_bad.jsonl:3: conversations[1] has no 'value'"), std::string::npos)
      << stats.bad_reasons[1];
  expect_data_error([&] { read_all_conversations(fixture("sharegpt_bad.jsonl")); }, {"sharegpt_bad.jsonl:2", "'tool'"});
}

TEST(DataReader, AutoTellsLimaStringsFromShareGptObjects) {
  TempDir dir;
  ReadStats stats;
  read_all_conversations(dir.write("l.jsonl", R"({"conversations": ["q", "a"]})"), DataFormat::kAuto,
                         OnBadRecord::kStop, &stats);
  EXPECT_EQ(stats.format, DataFormat::kLima);
  read_all_conversations(
      dir.write("s.jsonl", R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})"),
      DataFormat::kAuto, OnBadRecord::kStop, &stats);
  EXPECT_EQ(stats.format, DataFormat::kShareGpt);
  // LIMA named explicitly on a ShareGPT file says which format it is.
  auto path =
      dir.write("s2.jsonl", R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})");
  expect_data_error([&] { read_all_conversations(path, DataFormat::kLima); },
                    {path + ":1", "conversations[0] must be a string, got object", "is ShareGPT"});
  // Auto on a file whose records switch shape holds them to the first record's format.
  path =
      dir.write("mixed.jsonl", R"({"conversations": ["q", "a"]})"
                               "\n"
                               R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})"
                               "\n");
  expect_data_error([&] { read_all_conversations(path); }, {path + ":2", "must be a string, got object"});
}

TEST(DataReader, SkippedBadFirstRecordDoesNotPickTheFormat) {
  TempDir dir;
  // The first record is LIMA-shaped but broken; the file is ShareGPT.
  auto path =
      dir.write("s.jsonl", R"({"conversations": []})"
                           "\n"
                           R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})"
                           "\n"
                           R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]})"
                           "\n");
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kAuto, OnBadRecord::kSkip, &stats);
  EXPECT_EQ(stats.format, DataFormat::kShareGpt);
  EXPECT_EQ(convs.size(), 2u);
  EXPECT_EQ(stats.bad, 1);
}

// issue 17: a number outside double range made nlohmann throw out_of_range, which escaped as an
// internal error (exit 3) with no file:line and ignored on_bad_record: skip.
TEST(DataReader, NumberOverflowIsABadRecord) {
  const std::string good = R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
  TempDir dir;
  for (const std::string& number : std::vector<std::string>{"1e999999", "-1e400", "1" + std::string(400, '0')}) {
    SCOPED_TRACE(number);
    const std::string bad_line =
        R"({"n": )" + number +
        R"(, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
    auto path = dir.write("o.jsonl", good + "\n" + bad_line + "\n" + good + "\n");
    expect_data_error([&] { read_all_conversations(path); }, {path + ":2", "number out of range"});
    ReadStats stats;
    auto convs = read_all_conversations(path, DataFormat::kAuto, OnBadRecord::kSkip, &stats);
    EXPECT_EQ(convs.size(), 2u);
    EXPECT_EQ(stats.bad, 1);
    EXPECT_EQ(convs[1].source.line, 3);

    // A JSON array (Alpaca) with the overflow in its second element, on line 3.
    auto arr =
        dir.write("o.json", "[\n {\"instruction\": \"x\", \"output\": \"y\"},\n {\"instruction\": \"x\", \"n\": [" +
                                number + "], \"output\": \"z\"},\n {\"instruction\": \"p\", \"output\": \"q\"}\n]\n");
    expect_data_error([&] { read_all_conversations(arr); }, {arr + ":3", "number out of range"});
    convs = read_all_conversations(arr, DataFormat::kAuto, OnBadRecord::kSkip, &stats);
    ASSERT_EQ(convs.size(), 2u);
    EXPECT_EQ(stats.bad, 1);
    EXPECT_EQ(stats.format, DataFormat::kAlpaca);
    EXPECT_EQ(convs[1].messages[1].content, "q");
    EXPECT_EQ(convs[1].source.line, 4);
  }
}

// Every accepted format written as messages JSONL and read back as format chat gives the same
// tokenized examples (the demo tokenizer ships with the repo, so this never skips).
TEST(DataReader, MessagesJsonlRoundTripGivesSameExamples) {
  const Tokenizer tok = Tokenizer::load(std::string(SFTGO_SOURCE_DIR) + "/data/demo/tokenizer");
  TempDir dir;
  for (const char* name :
       {"lima.jsonl", "alpaca.json", "alpaca.jsonl", "chat.jsonl", "sharegpt.jsonl", "sharegpt_role_content.json"}) {
    SCOPED_TRACE(name);
    std::string jsonl;
    for (const auto& c : read_all_conversations(fixture(name))) jsonl += to_messages_json(c) + "\n";
    auto converted = dir.write("converted.jsonl", jsonl);
    for (TemplateKind kind : {TemplateKind::kLlama3, TemplateKind::kPlain}) {
      DataOptions opts;
      opts.path = fixture(name);
      opts.template_kind = kind;
      opts.max_seq_len = 256;
      opts.system_prompt = "Be kind.";
      PreparedDataset original = prepare_dataset(opts, tok);
      opts.path = converted;
      opts.format = DataFormat::kChat;
      PreparedDataset reread = prepare_dataset(opts, tok);
      ASSERT_EQ(original.examples.size(), reread.examples.size());
      for (size_t i = 0; i < original.examples.size(); ++i) {
        EXPECT_EQ(original.examples[i].ids, reread.examples[i].ids) << "example " << i;
        EXPECT_EQ(original.examples[i].labels, reread.examples[i].labels) << "example " << i;
      }
    }
  }
}

TEST(DataReader, MessagesJsonIsPlainAndKeepsUnicode) {
  Conversation c;
  c.messages = {{Role::kSystem, "s"}, {Role::kUser, "caf\xC3\xA9 \"q\"\n"}, {Role::kAssistant, "a"}};
  c.input = "ctx";
  EXPECT_EQ(
      to_messages_json(c),
      "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"caf\xC3\xA9 \\\"q\\\"\\n\\n\\nctx\"},"
      "{\"role\":\"assistant\",\"content\":\"a\"}]}");
}

}  // namespace
}  // namespace sftgo::data
