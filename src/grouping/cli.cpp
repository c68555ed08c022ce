// The `groups` subcommand body: shares of important tokens and highlighted examples (terminal + HTML).
#include "sftgo/grouping/cli.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <iostream>

#include "sftgo/core/format.h"

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::grouping {
namespace {

enum Kind : uint8_t { kPrompt = 0, kTrained = 1, kImportant = 2 };

// A run of text (valid UTF-8) with one kind.
struct Run {
  Kind kind;
  std::string text;
};

// Concatenates the tokens' raw bytes and cuts them into runs at UTF-8 character boundaries, so a
// character split over two tokens is shown once, with the kind of the token holding its first byte.
// Invalid bytes become U+FFFD as in Tokenizer::decode.
std::vector<Run> runs_of(const data::TokenizedExample& ex, const std::vector<uint8_t>& groups, const Tokenizer& tok) {
  std::string bytes;
  std::vector<Kind> kinds;
  for (size_t t = 0; t < ex.ids.size(); ++t) {
    const Kind k = ex.labels[t] == data::kIgnoreLabel                    ? kPrompt
                   : (t < groups.size() && groups[t] == kGroupImportant) ? kImportant
                                                                         : kTrained;
    const std::string b = tok.token_bytes(ex.ids[t]);
    bytes += b;
    kinds.insert(kinds.end(), b.size(), k);
  }
  std::vector<Run> runs;
  auto emit = [&](Kind k, std::string_view s) {
    if (runs.empty() || runs.back().kind != k) runs.push_back({k, ""});
    runs.back().text += s;
  };
  for (size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= bytes.size();
    if (ok && len > 1) ok = find_invalid_utf8(std::string_view(bytes).substr(i, len)) == std::string::npos;
    if (!ok) {
      emit(kinds[i], "\xEF\xBF\xBD");
      ++i;
      continue;
    }
    emit(kinds[i], std::string_view(bytes).substr(i, len));
    i += len;
  }
  return runs;
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Names the flag and the path in any write error (exit 1; a std::filesystem error would otherwise be
// an "internal error").
void write_output(const std::string& path, std::string_view text, const char* flag) {
  try {
    write_file_atomic(path, text);
  } catch (const Error& e) {
    SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "groups ", flag, " ", path, ": ", e.message());
  } catch (const std::exception& e) {
    SFTGO_FAIL_HINT(ErrorKind::kIo, "pick a writable path", "groups ", flag, " ", path, ": ", e.what());
  }
}

bool use_ansi(const std::ostream& out) {
  return &out == &std::cout && ::isatty(STDOUT_FILENO) && std::getenv("NO_COLOR") == nullptr;
}

}  // namespace

std::string render_example(const data::TokenizedExample& ex, const std::vector<uint8_t>& groups, const Tokenizer& tok,
                           const std::string& mode) {
  SFTGO_CHECK(mode == "ansi" || mode == "brackets" || mode == "html", ErrorKind::kInternal,
              "render_example: unknown mode '", mode, "'");
  std::string out;
  for (const auto& r : runs_of(ex, groups, tok)) {
    if (mode == "brackets") {
      out += r.kind == kImportant ? "[[" + r.text + "]]" : r.text;
    } else if (mode == "ansi") {
      // Prompt dim, important tokens black on yellow, other trained tokens plain.
      if (r.kind == kPrompt)
        out += "\x1b[2m" + r.text + "\x1b[0m";
      else if (r.kind == kImportant)
        out += "\x1b[30;43m" + r.text + "\x1b[0m";
      else
        out += r.text;
    } else {
      const std::string e = html_escape(r.text);
      if (r.kind == kPrompt)
        out += "<span class=\"p\">" + e + "</span>";
      else if (r.kind == kImportant)
        out += "<mark>" + e + "</mark>";
      else
        out += e;
    }
  }
  return out;
}

void write_groups_jsonl(const std::string& path, const std::vector<data::TokenizedExample>& examples,
                        const GroupingOutput& result, const Tokenizer& tok, const GroupingOptions& opts) {
  SFTGO_CHECK(result.groups.size() == examples.size() && result.scores.size() == examples.size(), ErrorKind::kInternal,
              "write_groups_jsonl: ", result.groups.size(), " masks and ", result.scores.size(), " score rows for ",
              examples.size(), " examples");
  std::string text;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& ex = examples[i];
    const auto& groups = result.groups[i];
    const auto& scores = result.scores[i];
    SFTGO_CHECK(groups.size() == ex.ids.size() && scores.size() == ex.ids.size(), ErrorKind::kInternal,
                "write_groups_jsonl: example ", i, " has ", ex.ids.size(), " tokens, ", groups.size(),
                " mask entries, ", scores.size(), " scores");
    nlohmann::json ids = nlohmann::json::array(), tokens = nlohmann::json::array(), trained = nlohmann::json::array(),
                   group = nlohmann::json::array(), score = nlohmann::json::array();
    int64_t n_trained = 0, n_important = 0;
    for (size_t t = 0; t < ex.ids.size(); ++t) {
      const bool is_trained = ex.labels[t] != data::kIgnoreLabel;
      const bool is_important = groups[t] == kGroupImportant;
      n_trained += is_trained;
      n_important += is_important;
      ids.push_back(ex.ids[t]);
      tokens.push_back(tok.token_bytes(ex.ids[t]));
      trained.push_back(is_trained ? 1 : 0);
      group.push_back(is_important ? 1 : 0);
      if (is_trained && std::isfinite(scores[t]))
        score.push_back(scores[t]);
      else
        score.push_back(nullptr);
    }
    nlohmann::json j = {
        {"index", ex.index >= 0 ? ex.index : static_cast<int64_t>(i)},
        {"source", ex.source.file.empty() ? std::string() : sftgo::format("{}:{}", ex.source.file, ex.source.line)},
        {"function", opts.function},
        {"top_k_percent", opts.top_k_percent},
        {"num_tokens", ex.ids.size()},
        {"num_trained", n_trained},
        {"num_important", n_important},
        {"ids", std::move(ids)},
        {"tokens", std::move(tokens)},
        {"trained", std::move(trained)},
        {"group", std::move(group)},
        {"score", std::move(score)}};
    // Token bytes may split a UTF-8 character: replace invalid sequences rather than throw.
    text += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    text += '\n';
  }
  write_output(path, text, "--jsonl");
}

int run_groups_cli(const std::vector<data::TokenizedExample>& examples, const Tokenizer& tok,
                   const GroupingOptions& opts, int show_n, const std::string& html_out, std::ostream& out,
                   const std::string& jsonl_out) {
  const auto result = compute_groups(examples, opts, &tok);
  const auto share = group_share(examples, result.groups);
  out << sftgo::format(
      "grouping function {} ({}), top {}% per sequence\n", opts.function,
      result.from_cache ? "loaded from " + result.cache_path : sftgo::format("computed in {:.2f} s", result.seconds),
      opts.top_k_percent);
  out << sftgo::format("{} examples, {} trained tokens, {} important\n", examples.size(), share.trained_tokens,
                       share.important_tokens);
  out << sftgo::format("important share: {:.2f}% overall, {:.2f}% mean per sequence\n", 100 * share.overall,
                       100 * share.mean_per_sequence);

  const std::string mode = use_ansi(out) ? "ansi" : "brackets";
  const size_t shown = std::min(examples.size(), static_cast<size_t>(std::max(show_n, 0)));
  std::string html;
  for (size_t i = 0; i < shown; ++i) {
    const auto& ex = examples[i];
    int64_t trained = 0, important = 0;
    for (size_t t = 0; t < ex.ids.size(); ++t) {
      trained += ex.labels[t] != data::kIgnoreLabel;
      important += result.groups[i][t] == kGroupImportant;
    }
    const std::string title =
        sftgo::format("example {} ({} tokens, {} trained, {} important)",
                      ex.index >= 0 ? ex.index : static_cast<int64_t>(i), ex.ids.size(), trained, important);
    out << "\n--- " << title << " ---\n" << render_example(ex, result.groups[i], tok, mode) << "\n";
    html +=
        "<h2>" + html_escape(title) + "</h2>\n<pre>" + render_example(ex, result.groups[i], tok, "html") + "</pre>\n";
  }
  if (!html_out.empty()) {
    const std::string page = sftgo::format(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sftgo groups: {0}</title>\n"
        "<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}"
        "pre{{white-space:pre-wrap;font-family:inherit;line-height:1.5;border:1px solid #ddd;padding:.5em}}"
        "mark{{background:#ffd54f}}.p{{color:#999}}</style></head><body>\n"
        "<h1>Grouping function {0}, top {1}%</h1>\n<p>{2} examples; {3:.2f}% of trained tokens important overall, "
        "{4:.2f}% mean per sequence. <mark>highlighted</mark>: important (group 1); "
        "<span class=\"p\">grey</span>: prompt (not trained).</p>\n{5}</body></html>\n",
        html_escape(opts.function), opts.top_k_percent, examples.size(), 100 * share.overall,
        100 * share.mean_per_sequence, html);
    write_output(html_out, page, "--html");
    out << "\nwrote " << html_out << "\n";
  }
  if (!jsonl_out.empty()) {
    write_groups_jsonl(jsonl_out, examples, result, tok, opts);
    out << "\nwrote " << jsonl_out << " (" << examples.size() << " examples)\n";
  }
  return 0;
}

}  // namespace sftgo::grouping
