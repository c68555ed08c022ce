// Multiple-choice evaluation tasks in the style of lm-evaluation-harness (lm_eval 0.4.13): task
// readers for each task's public JSONL rows (Hugging Face dataset fields) and the exact prompt
// strings lm_eval builds. No LibTorch here: reading, prompting and metrics are plain C++.
//
// A document becomes one context and N choices; each choice is scored as the continuation
// target_delimiter + choice (" " + choice) after the context. Few-shot examples are the first K
// documents of a few-shot pool (lm_eval's "first_n" sampler, which MMLU uses; for MMLU the pool
// is restricted to the document's subject). See docs/evaluation.md for the fields of every task.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sftgo::eval {

enum class TaskKind { kArc, kOpenBookQa, kHellaSwag, kMmlu, kTruthfulQaMc1, kTruthfulQaMc2, kMathQa };

struct TaskInfo {
  std::string name;  // lm_eval task name, e.g. "arc_challenge"
  TaskKind kind;
  std::vector<std::string> metrics;  // the metrics lm_eval reports for the task ("acc", "acc_norm")
  bool allows_fewshot = true;        // TruthfulQA carries its own fixed 6-shot primer
};

// Known names: arc_challenge, arc_easy, openbookqa, hellaswag, mmlu, truthfulqa_mc1,
// truthfulqa_mc2, mathqa. Throws sftgo::Error(kUsage) with the list (and a suggestion) otherwise.
const TaskInfo& find_task(const std::string& name);
std::vector<std::string> task_names();

// One evaluation document after lm_eval's doc_to_text / doc_to_choice / doc_to_target.
struct Doc {
  std::string text;                  // doc_to_text (the question part of the context)
  std::vector<std::string> choices;  // doc_to_choice (continuations without the delimiter)
  int64_t gold = 0;                  // doc_to_target, an index into choices
  std::vector<int> labels;           // truthfulqa_mc2: 1 = true answer, per choice
  std::string subject;               // mmlu only
  std::string raw;                   // the JSON line as read (few-shot de-duplication)
  std::string source;                // "FILE:LINE" for messages
};

// Reads JSONL (one document per line, blank lines skipped). Errors are sftgo::Error(kData)
// naming FILE:LINE and the missing or bad field (e.g. a gold answer outside the choices).
std::vector<Doc> read_task_file(const TaskInfo& task, const std::string& path);
// One line, for tests and for other readers; `source` is "FILE:LINE".
Doc parse_doc(const TaskInfo& task, const std::string& json_line, const std::string& source);

// The full context lm_eval builds: description (MMLU) + K few-shot blocks "text answer\n\n" +
// this document's text. `fewshot` are the chosen examples, in order.
std::string build_context(const TaskInfo& task, const Doc& doc, const std::vector<const Doc*>& fewshot);

// First `k` documents of `pool` (same subject for MMLU), skipping documents identical to `doc`
// when `exclude_same` (pool = the evaluated file itself). Throws when fewer than k remain.
std::vector<const Doc*> pick_fewshot(const TaskInfo& task, const Doc& doc, const std::vector<Doc>& pool, int64_t k,
                                     bool exclude_same);

// lm_eval's MMLU category of a subject ("stem", "humanities", "social_sciences", "other"), or ""
// for an unknown subject.
std::string mmlu_category(const std::string& subject);

// Helpers that mirror lm_eval's Python string handling (exposed for tests).
std::string hellaswag_preprocess(const std::string& text);
std::vector<std::string> mathqa_choices(const std::string& options);
int64_t utf8_length(const std::string& s);  // Python len(str): code points

}  // namespace sftgo::eval
