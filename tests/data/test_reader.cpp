#include <gtest/gtest.h>
#include <unistd.h>

#include "sftgo/core/error.h"
#include "sftgo/data/conversation.h"
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
    for (const auto& p : parts) EXPECT_NE(e.message().find(p), std::string::npos) << "'" << p << "' not in: " << e.message();
  }
}

TEST(DataReader, LimaAlternatesUserAndAssistant) {
  TempDir dir;
  auto path = dir.write("lima.jsonl",
                       R"({"conversations": ["Hi?", "Hello!"], "source": "stackexchange"})" "\n"
                       R"({"conversations": ["a", "b", "c", "d"]})" "\n");
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
  auto path = dir.write("a.jsonl", "{\"instruction\": \"x\", \"output\": \"y\"}\r\n\r\n{\"instruction\": \"p\", \"input\": null, \"output\": \"q\"}\r\n");
  ReadStats stats;
  auto convs = read_all_conversations(path, DataFormat::kAlpaca, OnBadRecord::kStop, &stats);
  ASSERT_EQ(convs.size(), 2u);
  EXPECT_EQ(convs[1].source.line, 3);  // the blank line counts
  EXPECT_EQ(convs[1].messages[1].content, "q");
}

TEST(DataReader, ChatWithSystem) {
  TempDir dir;
  auto path = dir.write("c.jsonl",
                       R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})" "\n");
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
      {"missing", R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]})", "missing field 'content'"},
      {"wrong type", R"({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]})", "must be a string, got number"},
      {"empty response", R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n"}]})", "empty response"},
      {"bad role", R"({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]})", "expected system, user or assistant"},
      {"ends with user", R"({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]})", "must end with an assistant"},
      {"no assistant", R"({"messages": [{"role": "user", "content": "q"}]})", "no assistant message"},
      {"not an object", R"([1, 2])", "expected a JSON object"},
      {"non-utf8", "{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xE9\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}", "invalid UTF-8"},
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
  auto path = dir.write("l.jsonl", R"({"conversations": ["q", 7]})" "\n");
  expect_data_error([&] { read_all_conversations(path, DataFormat::kLima); }, {":1", "conversations[1] must be a string"});
  path = dir.write("l2.jsonl", R"({"conversations": ["q", "a", "q2"]})" "\n");
  expect_data_error([&] { read_all_conversations(path, DataFormat::kLima); }, {":1", "must end with an assistant"});
}

TEST(DataReader, AlpacaArrayErrors) {
  TempDir dir;
  auto path = dir.write("a.json", "[\n {\"instruction\": \"x\", \"output\": \"y\"},\n {\"instruction\": \"x\", \"output\": \"\"}\n]");
  expect_data_error([&] { read_all_conversations(path); }, {path + ":3", "empty response"});
  path = dir.write("b.json", "[\n {\"instruction\": \"x\", \"output\": \"y\"},\n {\"instruction\": \"x\" \"output\": \"\"}\n]");
  expect_data_error([&] { read_all_conversations(path); }, {path + ":3", "malformed JSON"});
}

TEST(DataReader, SkipCountsBadRecordsAndKeepsGoodOnes) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 30; ++i) {
    if (i % 3 == 0) text += "{not json\n";
    else text += R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})" "\n";
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

}  // namespace
}  // namespace sftgo::data
