// Task readers, prompts, metrics and bad-input errors of the eval module. The numbers against
// lm_eval itself are checked in tests/python/test_eval_lm_eval.py.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/eval/metrics.h"
#include "sftgo/eval/tasks.h"

namespace sftgo::eval {
namespace {

using test_util::TempDir;

// Expects read_task_file to throw sftgo::Error whose text contains every needle.
void expect_error(const std::string& task, const std::string& content, const std::vector<std::string>& needles) {
  TempDir dir("eval");
  const std::string path = dir.write("t.jsonl", content);
  try {
    read_task_file(find_task(task), path);
    FAIL() << "no error for " << content;
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << what << "\n  missing: " << n;
  }
}

const char* kArc = R"({"question": "Q1?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"})";

TEST(EvalTasks, ArcPromptAndGold) {
  Doc d = parse_doc(find_task("arc_challenge"), kArc, "f:1");
  EXPECT_EQ(d.text, "Question: Q1?\nAnswer:");
  EXPECT_EQ(d.choices, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(d.gold, 1);
}

TEST(EvalTasks, MissingFieldNamesFileAndLine) {
  expect_error("arc_challenge", std::string(kArc) + "\n\n{\"question\": \"q\", \"answerKey\": \"A\"}\n",
               {"t.jsonl:3", "missing field \"choices\""});
  expect_error("hellaswag", R"({"ctx_a": "a", "ctx_b": "b", "endings": ["e"], "label": "0"})",
               {"t.jsonl:1", "\"activity_label\""});
  expect_error("mmlu", R"({"question": "q", "choices": ["a","b","c","d"], "answer": 0})", {"t.jsonl:1", "\"subject\""});
  expect_error("truthfulqa_mc2", R"({"question": "q", "mc1_targets": {"choices": ["a"], "labels": [1]}})",
               {"t.jsonl:1", "\"mc2_targets\""});
  expect_error("mathqa", R"({"Problem": "p", "options": "a ) 1 , b ) 2"})", {"t.jsonl:1", "\"correct\""});
  expect_error("openbookqa", "{not json\n", {"t.jsonl:1", "not valid JSON"});
}

TEST(EvalTasks, GoldOutOfRangeNamesLine) {
  expect_error(
      "arc_easy",
      std::string(kArc) + "\n" + R"({"question": "q", "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "E"})",
      {"t.jsonl:2", "answerKey \"E\"", "out of range"});
  expect_error("hellaswag",
               R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["e1", "e2"], "label": "2"})",
               {"t.jsonl:1", "gold answer index 2", "2 choices"});
  expect_error("mmlu", R"({"question": "q", "subject": "anatomy", "choices": ["a","b","c","d"], "answer": 7})",
               {"t.jsonl:1", "index 7"});
  expect_error("mathqa", R"({"Problem": "p", "options": "a ) 1 , b ) 2 , e ) 3", "correct": "d"})",
               {"t.jsonl:1", "index 3", "3 choices"});
  expect_error("truthfulqa_mc1", R"({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 1]}})",
               {"t.jsonl:1", "labels[0] must be 1"});
}

TEST(EvalTasks, HellaswagPreprocessMirrorsLmEval) {
  // strip, " [title]" -> ". ", drop [..] spans (not across newlines), "  " -> " ".
  EXPECT_EQ(hellaswag_preprocess("  How to x [title] Do it [step] now  "), "How to x. Do it now");
  EXPECT_EQ(hellaswag_preprocess("a [b\n] c"), "a [b\n] c");
  Doc d = parse_doc(
      find_task("hellaswag"),
      R"({"activity_label": "Cooking", "ctx_a": "A man cuts.", "ctx_b": "HE then", "endings": ["fries [x]it.", "eats."], "label": 1})",
      "f:1");
  EXPECT_EQ(d.text, "Cooking: A man cuts. He then");  // ctx_b.capitalize() lowers the rest
  EXPECT_EQ(d.choices[0], "fries it.");
}

TEST(EvalTasks, MathqaChoiceParsing) {
  EXPECT_EQ(mathqa_choices("a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"),
            (std::vector<std::string>{"38", "27.675", "30", "data inadequate", "none of these"}));
  EXPECT_EQ(mathqa_choices("['a ) 1 , 2', 'b ) 3 , c ) 4 , e ) 5 ']"),
            (std::vector<std::string>{"1", "3", "4", "5 ']"}));
  // Expected values are Python's re.findall on the same strings ('.' stops at newlines).
  EXPECT_EQ(mathqa_choices("a ) x\nb ) y , e ) z\n"), (std::vector<std::string>{"y", "z"}));
  EXPECT_TRUE(mathqa_choices("e ) a\nb").empty());
}

TEST(EvalTasks, MmluContextWithSubjectHeaderAndFewshot) {
  const TaskInfo& t = find_task("mmlu");
  std::vector<Doc> pool = {
      parse_doc(t, R"({"question": "D1", "subject": "college_physics", "choices": ["a","b","c","d"], "answer": 2})",
                "p:1"),
      parse_doc(t, R"({"question": "O1", "subject": "anatomy", "choices": ["a","b","c","d"], "answer": 0})", "p:2"),
      parse_doc(t, R"({"question": "D2", "subject": "college_physics", "choices": ["e","f","g","h"], "answer": "B"})",
                "p:3")};
  Doc d = parse_doc(
      t, R"({"question": " Q ", "subject": "college_physics", "choices": ["1","2","3","4"], "answer": 3})", "f:1");
  auto shots = pick_fewshot(t, d, pool, 2, false);
  ASSERT_EQ(shots.size(), 2u);
  EXPECT_EQ(build_context(t, d, shots),
            "The following are multiple choice questions (with answers) about college physics.\n\n"
            "D1\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
            "D2\nA. e\nB. f\nC. g\nD. h\nAnswer: B\n\n"
            "Q\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:");
  EXPECT_THROW(pick_fewshot(t, d, pool, 3, false), Error);
  EXPECT_THROW(pick_fewshot(find_task("truthfulqa_mc1"), d, pool, 1, false), Error);
}

TEST(EvalTasks, UnknownTaskSuggests) {
  try {
    find_task("arc_chalenge");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("arc_challenge"), std::string::npos);
  }
}

TEST(EvalMetrics, AccNormAndMc2) {
  const TaskInfo& arc = find_task("arc_easy");
  Doc d = parse_doc(
      arc, R"({"question": "q", "choices": {"text": ["ab", "abcdef"], "label": ["A", "B"]}, "answerKey": "B"})", "f:1");
  auto m = doc_metrics(arc, d, {-2.0, -3.0});
  EXPECT_EQ(m["acc"], 0.0);
  EXPECT_EQ(m["acc_norm"], 1.0);  // -1.0/char vs -0.5/char
  const TaskInfo& mc2 = find_task("truthfulqa_mc2");
  Doc t =
      parse_doc(mc2, R"({"question": "q", "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 1]}})", "f:1");
  auto v = doc_metrics(mc2, t, {std::log(0.2), std::log(0.3), std::log(0.1)});
  EXPECT_NEAR(v["acc"], 0.5, 1e-12);
  // Code points, not bytes, for acc_norm (Python len(str)).
  EXPECT_EQ(utf8_length("h\xc3\xa9llo"), 5);
}

TEST(EvalMetrics, StderrIsSampleStderrOfMean) {
  MetricValue v = mean_with_stderr({1.0, 0.0, 1.0, 1.0});
  EXPECT_DOUBLE_EQ(v.value, 0.75);
  EXPECT_NEAR(v.stderr_, std::sqrt(0.75 / 3.0) / 2.0, 1e-15);  // sqrt(sum sq dev / (n-1)) / sqrt(n)
  EXPECT_TRUE(std::isnan(mean_with_stderr({1.0}).stderr_));
}

}  // namespace
}  // namespace sftgo::eval
