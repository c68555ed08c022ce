// Task readers and lm_eval prompt strings (lm_eval 0.4.13 task YAMLs and utils.py, re-implemented).
#include "sftgo/eval/tasks.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::eval {

using nlohmann::json;

namespace {

const std::vector<TaskInfo>& all_tasks() {
  static const std::vector<TaskInfo> kTasks = {
      {"arc_challenge", TaskKind::kArc, {"acc", "acc_norm"}, true},
      {"arc_easy", TaskKind::kArc, {"acc", "acc_norm"}, true},
      {"openbookqa", TaskKind::kOpenBookQa, {"acc", "acc_norm"}, true},
      {"hellaswag", TaskKind::kHellaSwag, {"acc", "acc_norm"}, true},
      {"mmlu", TaskKind::kMmlu, {"acc"}, true},
      {"truthfulqa_mc1", TaskKind::kTruthfulQaMc1, {"acc"}, false},
      {"truthfulqa_mc2", TaskKind::kTruthfulQaMc2, {"acc"}, false},
      {"mathqa", TaskKind::kMathQa, {"acc", "acc_norm"}, true},
  };
  return kTasks;
}

// lm_eval truthfulqa_mc1/mc2 doc_to_text: a fixed 6-shot QA primer.
constexpr const char* kTruthfulQaPrimer =
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.";

// The 57 MMLU subjects and lm_eval's category (the tag of each mmlu_<subject> task).
const std::vector<std::pair<std::string, std::string>>& mmlu_subjects() {
  static const std::vector<std::pair<std::string, std::string>> kSubjects = {
      {"abstract_algebra", "stem"},
      {"anatomy", "stem"},
      {"astronomy", "stem"},
      {"business_ethics", "other"},
      {"clinical_knowledge", "other"},
      {"college_biology", "stem"},
      {"college_chemistry", "stem"},
      {"college_computer_science", "stem"},
      {"college_mathematics", "stem"},
      {"college_medicine", "other"},
      {"college_physics", "stem"},
      {"computer_security", "stem"},
      {"conceptual_physics", "stem"},
      {"econometrics", "social_sciences"},
      {"electrical_engineering", "stem"},
      {"elementary_mathematics", "stem"},
      {"formal_logic", "humanities"},
      {"global_facts", "other"},
      {"high_school_biology", "stem"},
      {"high_school_chemistry", "stem"},
      {"high_school_computer_science", "stem"},
      {"high_school_european_history", "humanities"},
      {"high_school_geography", "social_sciences"},
      {"high_school_government_and_politics", "social_sciences"},
      {"high_school_macroeconomics", "social_sciences"},
      {"high_school_mathematics", "stem"},
      {"high_school_microeconomics", "social_sciences"},
      {"high_school_physics", "stem"},
      {"high_school_psychology", "social_sciences"},
      {"high_school_statistics", "stem"},
      {"high_school_us_history", "humanities"},
      {"high_school_world_history", "humanities"},
      {"human_aging", "other"},
      {"human_sexuality", "social_sciences"},
      {"international_law", "humanities"},
      {"jurisprudence", "humanities"},
      {"logical_fallacies", "humanities"},
      {"machine_learning", "stem"},
      {"management", "other"},
      {"marketing", "other"},
      {"medical_genetics", "other"},
      {"miscellaneous", "other"},
      {"moral_disputes", "humanities"},
      {"moral_scenarios", "humanities"},
      {"nutrition", "other"},
      {"philosophy", "humanities"},
      {"prehistory", "humanities"},
      {"professional_accounting", "other"},
      {"professional_law", "humanities"},
      {"professional_medicine", "other"},
      {"professional_psychology", "social_sciences"},
      {"public_relations", "social_sciences"},
      {"security_studies", "social_sciences"},
      {"sociology", "social_sciences"},
      {"us_foreign_policy", "social_sciences"},
      {"virology", "other"},
      {"world_religions", "humanities"},
  };
  return kSubjects;
}

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python str.strip() for ASCII whitespace (lm_eval's data is checked for nothing else).
std::string py_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_py_space(s[b])) ++b;
  while (e > b && is_py_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos).append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Python str.capitalize() on ASCII letters: first upper, the rest lower (non-ASCII bytes kept).
std::string py_capitalize(const std::string& s) {
  std::string out = s;
  for (size_t i = 0; i < out.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(out[i]);
    if (c >= 0x80) continue;
    out[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return out;
}

// ---- field access with FILE:LINE errors ---------------------------------------------------------

const json& field(const json& j, const char* name, const std::string& src) {
  SFTGO_CHECK(j.contains(name), ErrorKind::kData, src, ": missing field \"", name, "\"");
  return j.at(name);
}

std::string str_field(const json& j, const char* name, const std::string& src) {
  const json& v = field(j, name, src);
  SFTGO_CHECK(v.is_string(), ErrorKind::kData, src, ": field \"", name, "\" must be a string, got ", v.type_name());
  return v.get<std::string>();
}

std::vector<std::string> str_list(const json& v, const std::string& what, const std::string& src) {
  SFTGO_CHECK(v.is_array(), ErrorKind::kData, src, ": ", what, " must be a list of strings, got ", v.type_name());
  std::vector<std::string> out;
  for (const auto& e : v) {
    SFTGO_CHECK(e.is_string(), ErrorKind::kData, src, ": ", what, " must hold strings, got ", e.type_name());
    out.push_back(e.get<std::string>());
  }
  SFTGO_CHECK(!out.empty(), ErrorKind::kData, src, ": ", what, " is empty");
  return out;
}

// HF "choices": {"text": [...], "label": [...]} (ARC, OpenBookQA).
void labelled_choices(const json& j, const std::string& answer_key, Doc& d, const std::string& src) {
  const json& c = field(j, "choices", src);
  SFTGO_CHECK(c.is_object(), ErrorKind::kData, src,
              ": field \"choices\" must be an object {\"text\": [...], \"label\": [...]}");
  SFTGO_CHECK(c.contains("text") && c.contains("label"), ErrorKind::kData, src,
              ": field \"choices\" needs \"text\" and \"label\" lists");
  d.choices = str_list(c["text"], "choices.text", src);
  std::vector<std::string> labels = str_list(c["label"], "choices.label", src);
  SFTGO_CHECK(labels.size() == d.choices.size(), ErrorKind::kData, src, ": choices.text has ", d.choices.size(),
              " entries but choices.label has ", labels.size());
  auto it = std::find(labels.begin(), labels.end(), answer_key);
  SFTGO_CHECK(it != labels.end(), ErrorKind::kData, src, ": answerKey \"", answer_key,
              "\" is not one of the choice labels [", join(labels, ", "), "] (gold answer out of range)");
  d.gold = it - labels.begin();
}

int64_t int_like(const json& v, const char* name, const std::string& src) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }) && s.size() < 10)
      return std::stoll(s);
  }
  SFTGO_FAIL(ErrorKind::kData, src, ": field \"", name, "\" must be an integer (or a string of digits), got ",
             v.dump());
}

void check_gold(const Doc& d, const std::string& src) {
  SFTGO_CHECK(d.gold >= 0 && d.gold < static_cast<int64_t>(d.choices.size()), ErrorKind::kData, src,
              ": gold answer index ", d.gold, " is out of range for ", d.choices.size(), " choices");
}

}  // namespace

const TaskInfo& find_task(const std::string& name) {
  for (const auto& t : all_tasks())
    if (t.name == name) return t;
  const auto names = task_names();
  SFTGO_FAIL_HINT(ErrorKind::kUsage, "known tasks: " + join(names, ", "), "unknown task '", name, "'; did you mean '",
                  closest_match(name, names), "'?");
}

std::vector<std::string> task_names() {
  std::vector<std::string> out;
  for (const auto& t : all_tasks()) out.push_back(t.name);
  return out;
}

std::string mmlu_category(const std::string& subject) {
  for (const auto& [s, c] : mmlu_subjects())
    if (s == subject) return c;
  return "";
}

int64_t utf8_length(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;  // count lead bytes only
  return n;
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string t = py_strip(text);
  t = replace_all(t, " [title]", ". ");
  // re.sub("\\[.*?\\]", "", t): shortest bracketed span, '.' does not cross a newline.
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t[i] == '[') {
      size_t j = i + 1;
      while (j < t.size() && t[j] != ']' && t[j] != '\n') ++j;
      if (j < t.size() && t[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out.push_back(t[i++]);
  }
  return replace_all(out, "  ", " ");
}

std::vector<std::string> mathqa_choices(const std::string& s) {
  // re.findall(r"[abcd] \) .*?, |e \) .*?$", options), then c[4:].rstrip(" ,").
  std::vector<std::string> found;
  auto opens = [&](size_t p) { return p + 3 < s.size() + 0 && s.compare(p + 1, 3, " ) ") == 0; };
  size_t pos = 0;
  while (pos < s.size()) {
    const char c = s[pos];
    size_t end = std::string::npos;
    if (c >= 'a' && c <= 'd' && opens(pos)) {
      for (size_t k = pos + 4; k + 1 < s.size() && s[k] != '\n'; ++k)
        if (s[k] == ',' && s[k + 1] == ' ') {
          end = k + 2;
          break;
        }
    }
    if (end == std::string::npos && c == 'e' && opens(pos)) {
      // '$' matches at the end or before a final newline; '.' never crosses a newline.
      size_t nl = s.find('\n', pos + 4);
      if (nl == std::string::npos)
        end = s.size();
      else if (nl == s.size() - 1)
        end = nl;
    }
    if (end == std::string::npos) {
      ++pos;
      continue;
    }
    std::string m = s.substr(pos + 4, end - pos - 4);
    while (!m.empty() && (m.back() == ' ' || m.back() == ',')) m.pop_back();
    found.push_back(m);
    pos = end > pos ? end : pos + 1;
  }
  return found;
}

namespace {

// The task-specific fields of the longer readers (MMLU, TruthfulQA, MathQA) into `d`.
void parse_mmlu(const json& j, Doc& d, const std::string& src) {
  d.subject = str_field(j, "subject", src);
  SFTGO_CHECK_HINT(!mmlu_category(d.subject).empty(), ErrorKind::kData, "subjects are the cais/mmlu config names",
                   src, ": unknown MMLU subject \"", d.subject, "\"");
  std::vector<std::string> c = str_list(field(j, "choices", src), "field \"choices\"", src);
  SFTGO_CHECK(c.size() == 4, ErrorKind::kData, src, ": MMLU needs exactly 4 choices, got ", c.size());
  d.text = py_strip(str_field(j, "question", src)) + "\nA. " + c[0] + "\nB. " + c[1] + "\nC. " + c[2] + "\nD. " +
           c[3] + "\nAnswer:";
  d.choices = {"A", "B", "C", "D"};
  const json& a = field(j, "answer", src);
  if (a.is_string() && a.get<std::string>().size() == 1 && a.get<std::string>()[0] >= 'A' &&
      a.get<std::string>()[0] <= 'Z')
    d.gold = a.get<std::string>()[0] - 'A';
  else
    d.gold = int_like(a, "answer", src);
}

void parse_truthfulqa(const TaskInfo& task, const json& j, Doc& d, const std::string& src) {
  d.text = std::string(kTruthfulQaPrimer) + "\n\nQ: " + str_field(j, "question", src) + "\nA:";
  const char* key = task.kind == TaskKind::kTruthfulQaMc1 ? "mc1_targets" : "mc2_targets";
  const json& t = field(j, key, src);
  SFTGO_CHECK(t.is_object() && t.contains("choices") && t.contains("labels"), ErrorKind::kData, src, ": field \"",
              key, "\" must be {\"choices\": [...], \"labels\": [...]}");
  d.choices = str_list(t["choices"], std::string(key) + ".choices", src);
  SFTGO_CHECK(t["labels"].is_array() && t["labels"].size() == d.choices.size(), ErrorKind::kData, src, ": ", key,
              ".labels must be a list as long as ", key, ".choices (", d.choices.size(), ")");
  for (const auto& l : t["labels"]) {
    SFTGO_CHECK(l.is_number_integer() && (l.get<int>() == 0 || l.get<int>() == 1), ErrorKind::kData, src, ": ", key,
                ".labels must hold 0 or 1");
    d.labels.push_back(l.get<int>());
  }
  // lm_eval scores against index 0: the dataset lists the (first) true answer first.
  SFTGO_CHECK(d.labels[0] == 1, ErrorKind::kData, src, ": ", key,
              ".labels[0] must be 1 (the true answer comes first, as in truthfulqa/truthful_qa)");
  d.gold = 0;
}

void parse_mathqa(const json& j, Doc& d, const std::string& src) {
  d.text = "Question: " + str_field(j, "Problem", src) + "\nAnswer:";
  const std::string options = str_field(j, "options", src);
  d.choices = mathqa_choices(options);
  SFTGO_CHECK(!d.choices.empty(), ErrorKind::kData, src,
              ": field \"options\" has no \"a ) ..., \" choices: ", excerpt(options));
  const std::string correct = str_field(j, "correct", src);
  static const std::array<std::string, 5> kLetters = {"a", "b", "c", "d", "e"};
  auto it = std::find(kLetters.begin(), kLetters.end(), correct);
  SFTGO_CHECK(it != kLetters.end(), ErrorKind::kData, src, ": field \"correct\" must be one of a-e, got \"",
              correct, "\"");
  d.gold = it - kLetters.begin();
}

}  // namespace

Doc parse_doc(const TaskInfo& task, const std::string& line, const std::string& src) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    SFTGO_FAIL(ErrorKind::kData, src, ": not valid JSON: ", e.what());
  }
  SFTGO_CHECK(j.is_object(), ErrorKind::kData, src, ": expected a JSON object per line");
  Doc d;
  d.raw = line;
  d.source = src;
  switch (task.kind) {
    case TaskKind::kArc:
      d.text = "Question: " + str_field(j, "question", src) + "\nAnswer:";
      labelled_choices(j, str_field(j, "answerKey", src), d, src);
      break;
    case TaskKind::kOpenBookQa: {
      d.text = str_field(j, "question_stem", src);
      const std::string key = str_field(j, "answerKey", src);
      size_t first = 0;  // answerKey.lstrip(): some rows carry a leading space
      while (first < key.size() && is_py_space(key[first])) ++first;
      labelled_choices(j, key.substr(first), d, src);
      break;
    }
    case TaskKind::kHellaSwag: {
      const std::string ctx = str_field(j, "ctx_a", src) + " " + py_capitalize(str_field(j, "ctx_b", src));
      d.text = hellaswag_preprocess(str_field(j, "activity_label", src) + ": " + ctx);
      for (const auto& e : str_list(field(j, "endings", src), "field \"endings\"", src))
        d.choices.push_back(hellaswag_preprocess(e));
      d.gold = int_like(field(j, "label", src), "label", src);
      break;
    }
    case TaskKind::kMmlu:
      parse_mmlu(j, d, src);
      break;
    case TaskKind::kTruthfulQaMc1:
    case TaskKind::kTruthfulQaMc2:
      parse_truthfulqa(task, j, d, src);
      break;
    case TaskKind::kMathQa:
      parse_mathqa(j, d, src);
      break;
  }
  check_gold(d, src);
  return d;
}

std::vector<Doc> read_task_file(const TaskInfo& task, const std::string& path) {
  std::ifstream in(path);
  SFTGO_CHECK(in.good(), ErrorKind::kIo, path, ": cannot open the ", task.name, " task file");
  std::vector<Doc> docs;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    docs.push_back(parse_doc(task, line, path + ":" + std::to_string(n)));
  }
  SFTGO_CHECK(!docs.empty(), ErrorKind::kData, path, ": no documents (expected one JSON object per line)");
  return docs;
}

std::string build_context(const TaskInfo& task, const Doc& doc, const std::vector<const Doc*>& fewshot) {
  std::string ctx;
  if (task.kind == TaskKind::kMmlu)
    ctx = "The following are multiple choice questions (with answers) about " + replace_all(doc.subject, "_", " ") +
          ".\n\n";
  for (const Doc* f : fewshot) ctx += f->text + " " + f->choices[static_cast<size_t>(f->gold)] + "\n\n";
  return ctx + doc.text;
}

std::vector<const Doc*> pick_fewshot(const TaskInfo& task, const Doc& doc, const std::vector<Doc>& pool, int64_t k,
                                     bool exclude_same) {
  std::vector<const Doc*> out;
  if (k <= 0) return out;
  SFTGO_CHECK(task.allows_fewshot, ErrorKind::kUsage, task.name,
              " uses its fixed 6-shot primer (lm_eval num_fewshot: 0); run it with --shots 0");
  for (const Doc& p : pool) {
    if (static_cast<int64_t>(out.size()) == k) break;
    if (task.kind == TaskKind::kMmlu && p.subject != doc.subject) continue;
    if (exclude_same && p.raw == doc.raw) continue;
    out.push_back(&p);
  }
  SFTGO_CHECK(static_cast<int64_t>(out.size()) == k, ErrorKind::kData, doc.source, ": ", k,
              " few-shot examples requested but the few-shot pool has only ", out.size(),
              task.kind == TaskKind::kMmlu ? " for subject \"" + doc.subject + "\"" : std::string());
  return out;
}

}  // namespace sftgo::eval
