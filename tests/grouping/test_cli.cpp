// The `groups` subcommand body with the real Llama-3 tokenizer (skipped when ../shared is absent).
#include <gtest/gtest.h>
#include <unistd.h>

#include <sstream>

#include "sftgo/core/strings.h"
#include "sftgo/grouping/cli.h"

namespace sftgo::grouping {
namespace {

const Tokenizer* llama3() {
  static std::unique_ptr<Tokenizer> tok = [] {
    std::unique_ptr<Tokenizer> t;
    const std::string dir = std::string(SFTGO_SHARED_DIR) + "/data/llama3";
    if (::access((dir + "/tokenizer.json").c_str(), R_OK) == 0) t = std::make_unique<Tokenizer>(Tokenizer::load(dir));
    return t;
  }();
  return tok.get();
}

std::string strip_brackets(std::string s) {
  for (const char* m : {"[[", "]]"})
    for (size_t p; (p = s.find(m)) != std::string::npos;) s.erase(p, 2);
  return s;
}

TEST(Cli, HighlightsAlignWithText) {
  const Tokenizer* tok = llama3();
  if (!tok) GTEST_SKIP() << "no Llama-3 tokenizer under " << SFTGO_SHARED_DIR;
  const std::string prompt = "Question: what is a café? ";
  const std::string answer = "A café (naïve spelling: cafe) serves coffee ☕ and 日本茶 in Zürich.";
  std::vector<data::TokenizedExample> ex(2);
  for (int i = 0; i < 2; ++i) {
    auto p = tok->encode_ordinary(prompt), a = tok->encode_ordinary(answer);
    ex[i].ids = p;
    ex[i].ids.insert(ex[i].ids.end(), a.begin(), a.end());
    ex[i].labels = ex[i].ids;
    std::fill(ex[i].labels.begin(), ex[i].labels.begin() + static_cast<std::ptrdiff_t>(p.size()), data::kIgnoreLabel);
    ex[i].index = i;
  }
  ex[1].ids.back() = tok->encode_ordinary("!").back();  // a different document for tf-idf
  ex[1].labels.back() = ex[1].ids.back();

  GroupingOptions opts;
  opts.function = "tfidf";
  opts.top_k_percent = 30;
  const std::string html = std::string(::testing::TempDir()) + "/sftgo_groups_" + std::to_string(::getpid()) + ".html";
  std::ostringstream out;
  ASSERT_EQ(run_groups_cli(ex, *tok, opts, 1, html, out), 0);
  const std::string text = out.str();
  EXPECT_NE(text.find("mean per sequence"), std::string::npos) << text;
  EXPECT_NE(text.find("[["), std::string::npos) << text;
  EXPECT_EQ(text.find("\x1b["), std::string::npos);  // not a TTY: no ANSI codes
  // Removing the brackets gives back exactly the decoded text.
  const auto rendered = render_example(ex[0], std::vector<uint8_t>(ex[0].ids.size(), 1), *tok, "brackets");
  EXPECT_EQ(rendered, prompt + "[[" + answer + "]]");
  EXPECT_EQ(strip_brackets(rendered), tok->decode(ex[0].ids));
  const std::string page = read_file(html);
  EXPECT_NE(page.find("<mark>"), std::string::npos);
  EXPECT_NE(page.find("caf"), std::string::npos);
  // Issue 24: positional placeholders were ignored ("Grouping function 30, top 2%", a literal "{5}").
  const auto h1 = page.find("<h1>Grouping function tfidf, top 30%</h1>\n<p>2 examples; ");
  EXPECT_NE(h1, std::string::npos) << page;
  EXPECT_LT(h1, page.find("<h2>example 0"));  // the legend comes before the examples
  EXPECT_EQ(page.find("{5}"), std::string::npos);
  std::remove(html.c_str());
}

}  // namespace
}  // namespace sftgo::grouping
