#include <gtest/gtest.h>

#include "sftgo/core/error.h"
#include "sftgo/data/template.h"
#include "test_util.h"

namespace sftgo::data {
namespace {

Conversation chat(std::vector<Message> messages) {
  Conversation c;
  c.messages = std::move(messages);
  c.source = {"mem.jsonl", 1};
  return c;
}

// Decodes the trained tokens and the untrained tokens separately.
std::pair<std::string, std::string> split_decode(const TokenizedExample& ex, const Tokenizer& tok) {
  std::vector<TokenId> trained, prompt;
  for (size_t t = 0; t < ex.ids.size(); ++t) (ex.labels[t] == kIgnoreLabel ? prompt : trained).push_back(ex.ids[t]);
  return {tok.decode(prompt), tok.decode(trained)};
}

TEST(DataTemplate, PyStripMatchesPythonStrip) {
  EXPECT_EQ(py_strip(" \t\nabc \r\n"), "abc");
  EXPECT_EQ(py_strip("\u00a0\u3000x y\u2003\u2029"), "x y");
  EXPECT_EQ(py_strip("\x1c\x1f"
                     "a"
                     "\x85"),
            "a");
  EXPECT_EQ(py_strip("\u200bz\u200b"), "\u200bz\u200b");  // U+200B is not whitespace in Python
  EXPECT_EQ(py_strip("   "), "");
  EXPECT_EQ(py_strip(""), "");
  EXPECT_EQ(py_strip("é "), "é");
}

TEST(DataTemplate, FitToLength) {
  TokenizedExample ex;
  ex.ids = {1, 2, 3, 4, 5, 6};
  ex.labels = {kIgnoreLabel, kIgnoreLabel, kIgnoreLabel, 4, 5, 6};
  ex.groups = {0, 0, 0, 1, 1, 1};
  ex.scores["s"] = {0, 0, 0, 1, 2, 3};
  TokenizedExample a = ex, b = ex, c = ex, d = ex;
  EXPECT_EQ(fit_to_length(a, 6, Truncation::kDrop), FitResult::kKept);
  EXPECT_EQ(fit_to_length(b, 5, Truncation::kDrop), FitResult::kDroppedTooLong);
  EXPECT_EQ(fit_to_length(c, 4, Truncation::kTruncate), FitResult::kTruncated);
  EXPECT_EQ(c.ids.size(), 4u);
  EXPECT_EQ(c.groups.size(), 4u);
  EXPECT_EQ(c.scores["s"].size(), 4u);
  EXPECT_TRUE(c.truncated);
  EXPECT_EQ(c.num_trained(), 1);
  EXPECT_EQ(fit_to_length(d, 3, Truncation::kTruncate), FitResult::kDroppedNoTrained);
  EXPECT_EQ(parse_truncation("drop"), Truncation::kDrop);
  EXPECT_THROW(parse_template_kind("chatml"), Error);
}

TEST(DataTemplate, Llama3LayoutAndLabels) {
  SFTGO_NEED_TOKENIZER(tok);
  auto conv = chat({{Role::kSystem, "Be brief."},
                    {Role::kUser, "  What is 2+2?\n"},
                    {Role::kAssistant, "4"},
                    {Role::kUser, "And 3+3?"},
                    {Role::kAssistant, " 6 \n"}});
  auto ex = apply_template(conv, tok, TemplateKind::kLlama3);
  ex.check_consistent();
  EXPECT_EQ(ex.ids[0], *tok.bos_id());
  EXPECT_EQ(tok.decode(ex.ids),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n6<|eot_id|>");
  // Trained: exactly the two answers and their <|eot_id|>, nothing of the headers.
  EXPECT_EQ(split_decode(ex, tok).second, "4<|eot_id|>6<|eot_id|>");
  EXPECT_EQ(ex.labels[0], kIgnoreLabel);
  EXPECT_EQ(ex.labels.back(), tok.special_id("<|eot_id|>"));
}

TEST(DataTemplate, SpecialTokenStringsInContentArePlainText) {
  SFTGO_NEED_TOKENIZER(tok);
  auto conv = chat({{Role::kUser, "print <|eot_id|> and <|begin_of_text|>"},
                    {Role::kAssistant, "<|start_header_id|>assistant<|end_header_id|> ok"}});
  auto ex = apply_template(conv, tok, TemplateKind::kLlama3);
  int eot = 0, bos = 0, headers = 0;
  for (TokenId id : ex.ids) {
    eot += id == tok.special_id("<|eot_id|>");
    bos += id == *tok.bos_id();
    headers += id == tok.special_id("<|start_header_id|>");
  }
  EXPECT_EQ(eot, 2);
  EXPECT_EQ(bos, 1);
  EXPECT_EQ(headers, 2);
  EXPECT_EQ(split_decode(ex, tok).second, "<|start_header_id|>assistant<|end_header_id|> ok<|eot_id|>");
}

TEST(DataTemplate, SystemPromptOnlyWhereMissing) {
  SFTGO_NEED_TOKENIZER(tok);
  auto plain = chat({{Role::kUser, "hi"}, {Role::kAssistant, "hello"}});
  auto with = apply_template(plain, tok, TemplateKind::kLlama3, std::string("You are helpful."));
  EXPECT_NE(tok.decode(with.ids).find("system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"), std::string::npos);
  auto own = chat({{Role::kSystem, "Mine."}, {Role::kUser, "hi"}, {Role::kAssistant, "hello"}});
  auto kept = apply_template(own, tok, TemplateKind::kLlama3, std::string("You are helpful."));
  EXPECT_EQ(tok.decode(kept.ids).find("You are helpful."), std::string::npos);
}

TEST(DataTemplate, AlpacaWithAndWithoutInput) {
  SFTGO_NEED_TOKENIZER(tok);
  const std::string eos = tok.id_to_token(*tok.eos_id());
  auto conv = chat({{Role::kUser, "Add the numbers."}, {Role::kAssistant, "3"}});
  conv.input = "1 and 2";
  auto ex = apply_template(conv, tok, TemplateKind::kAlpaca);
  auto [prompt, response] = split_decode(ex, tok);
  EXPECT_EQ(prompt,
            "<|begin_of_text|>Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
            "Add the numbers.\n\n### Input:\n1 and 2\n\n### Response:\n");
  EXPECT_EQ(response, "3" + eos);
  conv.input.clear();
  auto ex2 = apply_template(conv, tok, TemplateKind::kAlpaca);
  EXPECT_EQ(split_decode(ex2, tok).first,
            "<|begin_of_text|>Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Response:\n");
  // Other templates fold the input into the user message.
  conv.input = "1 and 2";
  auto ex3 = apply_template(conv, tok, TemplateKind::kLlama3);
  EXPECT_NE(tok.decode(ex3.ids).find("Add the numbers.\n\n1 and 2<|eot_id|>"), std::string::npos);
}

TEST(DataTemplate, PlainMultiTurn) {
  SFTGO_NEED_TOKENIZER(tok);
  const std::string eos = tok.id_to_token(*tok.eos_id());
  auto conv = chat({{Role::kUser, "Q1"}, {Role::kAssistant, "A1"}, {Role::kUser, "Q2"}, {Role::kAssistant, "A2"}});
  auto ex = apply_template(conv, tok, TemplateKind::kPlain);
  EXPECT_EQ(tok.decode(ex.ids), "<|begin_of_text|>Q1\nA1" + eos + "Q2\nA2" + eos);
  EXPECT_EQ(split_decode(ex, tok).second, "A1" + eos + "A2" + eos);
}

// The generation-time prompt is the training-time rendering cut before the reply, for every
// template, including text that starts with a non-breaking space (Python's strip removes it; an
// ASCII-only trim, what `generate --chat` once did, keeps it and tokenizes differently).
TEST(DataTemplate, GenerationPromptIsPrefixOfTrainingIds) {
  const Tokenizer demo = Tokenizer::load(std::string(SFTGO_SOURCE_DIR) + "/data/demo/tokenizer");
  std::vector<const Tokenizer*> toks = {&demo};
  if (const Tokenizer* llama3 = testing::llama3_tokenizer()) toks.push_back(llama3);
  for (const Tokenizer* tok : toks) {
    for (TemplateKind kind : {TemplateKind::kLlama3, TemplateKind::kAlpaca, TemplateKind::kPlain}) {
      for (const std::string user : {"\u00a0Hello there", " \u00a0\u3000x = 1\n", "plain"}) {
        SCOPED_TRACE(std::string(template_kind_name(kind)) + " / " + tok->source_path() + " / '" + user + "'");
        const std::vector<TokenId> gen = render_generation_prompt(user, *tok, kind);
        auto train = apply_template(chat({{Role::kUser, user}, {Role::kAssistant, "Hi."}}), *tok, kind);
        ASSERT_LT(gen.size(), train.ids.size());
        EXPECT_EQ(gen, std::vector<TokenId>(train.ids.begin(), train.ids.begin() + static_cast<long>(gen.size())));
        // What follows the prompt is exactly the trained reply.
        for (size_t t = 0; t < train.ids.size(); ++t) EXPECT_EQ(train.labels[t] != kIgnoreLabel, t >= gen.size()) << t;
        // With a system prompt too (the prefix property holds turn by turn).
        const std::vector<TokenId> gen_sys = render_generation_prompt(user, *tok, kind, std::string("Be brief."));
        auto train_sys = apply_template(chat({{Role::kUser, user}, {Role::kAssistant, "Hi."}}), *tok, kind,
                                        std::string("Be brief."));
        EXPECT_EQ(gen_sys, std::vector<TokenId>(train_sys.ids.begin(),
                                                train_sys.ids.begin() + static_cast<long>(gen_sys.size())));
      }
    }
    const std::vector<TokenId> gen = render_generation_prompt("\u00a0Hello", *tok, TemplateKind::kLlama3);
    EXPECT_EQ(tok->decode(gen),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
}

}  // namespace
}  // namespace sftgo::data
