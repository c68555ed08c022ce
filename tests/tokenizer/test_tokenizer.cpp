// Encode/decode behaviour on a hand-made fixture (always runs) and on the real Llama-3 tokenizer
// against HF's golden ids (skipped when ../shared is absent).
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/tokenizer/tokenize_cli.h"
#include "sftgo/tokenizer/tokenizer.h"
#include "test_helpers.h"

namespace sftgo {
namespace {

using test::have_llama3;
using test::llama3_dir;
using test::tiny_dir;
using Ids = std::vector<TokenId>;

// ids in the fixture: bytes are 0..255 in byte order, then the merges' results.
constexpr TokenId kHe = 256, kGthe = 258, kLl = 259, kHello = 262, kIng = 266, kGworld = 267;
constexpr TokenId kBos = 268, kEot = 269, kNs = 270;

TEST(TokenizerTiny, LoadsAndReportsSizes) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  EXPECT_EQ(tok.vocab_size(), 271);
  EXPECT_EQ(tok.added_tokens().size(), 3u);
  EXPECT_EQ(tok.source_path(), tiny_dir() + "/tokenizer.json");
  Tokenizer same = Tokenizer::load(tiny_dir() + "/tokenizer.json");
  EXPECT_EQ(same.vocab_size(), 271);
}

TEST(TokenizerTiny, BpeMergesInRankOrder) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  EXPECT_EQ(tok.encode("the"), (Ids{'t', kHe}));
  EXPECT_EQ(tok.encode(" the hello"), (Ids{kGthe, ' ', kHe, kLl, 'o'}));
  EXPECT_EQ(tok.encode("sing"), (Ids{'s', kIng}));
  // Values cross-checked with HF tokenizers on this fixture.
  EXPECT_EQ(tok.encode("    a"), (Ids{263, ' ', ' ', 'a'}));
}

TEST(TokenizerTiny, IgnoreMergesEmitsWholeVocabWord) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  // "Ġworld" has no merge path; ignore_merges finds it whole. "hello" is a pre-token in the vocab too.
  EXPECT_EQ(tok.encode("hello world"), (Ids{kHello, kGworld}));
}

TEST(TokenizerTiny, SpecialVersusOrdinary) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  EXPECT_EQ(tok.encode("<|eot_id|>x[NS]"), (Ids{kEot, 'x', kNs}));
  // Ordinary: special tokens are text, non-special added tokens still match (HF encode_special_tokens).
  EXPECT_EQ(tok.encode("<|eot_id|>x[NS]", SpecialTokens::kOrdinary),
            (Ids{'<', '|', 'e', 'o', 't', '_', 'i', 'd', '|', '>', 'x', kNs}));
  EXPECT_EQ(tok.encode_ordinary("<|eot_id|>"), tok.encode("<|eot_id|>", SpecialTokens::kOrdinary));
  EXPECT_EQ(tok.encode("<|begin_of_text|><|eot_id|>"), (Ids{kBos, kEot}));
  EXPECT_EQ(tok.encode("<|eot_id"), (Ids{'<', '|', 'e', 'o', 't', '_', 'i', 'd'}));
}

TEST(TokenizerTiny, DecodeRoundTripAndLossy) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  for (std::string s :
       std::vector<std::string>{"", "the hello world", "  \t\n\r\n x",
                                "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80 <|eot_id|>", std::string("nul\0byte", 8)}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
    EXPECT_EQ(tok.decode(tok.encode(s, SpecialTokens::kOrdinary)), s);
  }
  // A lone lead byte decodes to U+FFFD, as HF's ByteLevel decoder (String::from_utf8_lossy).
  EXPECT_EQ(tok.decode({0xE2}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({0xE2, 0x82, 'h'}), "\xEF\xBF\xBDh");
  EXPECT_EQ(tok.decode({0xF0, 0x80}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({kBos, 'h', kEot}, /*skip_special=*/true), "h");
  EXPECT_EQ(tok.decode({kBos, 'h', kNs}, /*skip_special=*/true), "h[NS]");
  EXPECT_THROW(tok.decode({271}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(TokenizerTiny, TokenLookups) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  EXPECT_EQ(tok.token_bytes(' '), " ");
  EXPECT_EQ(tok.token_bytes(kGthe), " the");
  EXPECT_EQ(tok.token_bytes(0xE2), "\xE2");
  EXPECT_EQ(tok.token_bytes(kEot), "<|eot_id|>");
  EXPECT_EQ(tok.id_to_token(kGthe), "\xC4\xA0the");  // "Ġthe"
  EXPECT_EQ(tok.token_to_id("\xC4\xA0the"), kGthe);
  EXPECT_EQ(tok.token_to_id("<|eot_id|>"), kEot);
  EXPECT_FALSE(tok.token_to_id("nope").has_value());
  EXPECT_EQ(tok.special_id("<|eot_id|>"), kEot);
  EXPECT_THROW(tok.special_id("[NS]"), Error);  // added but not special
  EXPECT_TRUE(tok.is_special(kEot));
  EXPECT_FALSE(tok.is_special(kNs));
  EXPECT_FALSE(tok.is_special(100000));
}

TEST(TokenizerTiny, SpecialIdsFromConfig) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  EXPECT_EQ(tok.bos_id(), kBos);           // {"content": ...} form
  EXPECT_EQ(tok.eos_id(), kEot);           // string form
  EXPECT_FALSE(tok.pad_id().has_value());  // explicit null
}

TEST(TokenizerTiny, DefaultsWithoutConfig) {
  test::TempDir dir;
  dir.write("tokenizer.json", test::slurp(tiny_dir() + "/tokenizer.json"));
  Tokenizer tok = Tokenizer::load(dir.path());
  EXPECT_EQ(tok.bos_id(), kBos);
  EXPECT_FALSE(tok.eos_id().has_value());  // <|end_of_text|> is not in the fixture
}

TEST(TokenizerTiny, AddedTokenIdsFollowHfAssignment) {
  // HF ignores the ids written in added_tokens and numbers new tokens after the vocab.
  std::string json = test::slurp(tiny_dir() + "/tokenizer.json");
  auto at = json.find("\"id\": 268");
  ASSERT_NE(at, std::string::npos);
  json.replace(at, 9, "\"id\": 300");
  test::TempDir dir;
  Tokenizer tok = Tokenizer::load(dir.write("tokenizer.json", json));
  EXPECT_EQ(tok.encode("<|begin_of_text|><|eot_id|>[NS]"), (Ids{kBos, kEot, kNs}));
}

TEST(TokenizerTiny, MergesAsStrings) {
  std::string json = test::slurp(tiny_dir() + "/tokenizer.json");
  // Rewrite the first merge pair ["h", "e"] in the legacy "h e" form; both forms may mix.
  const std::string pair = "[\n    \"h\",\n    \"e\"\n   ]";
  auto at = json.find(pair);
  ASSERT_NE(at, std::string::npos) << "fixture layout changed";
  json.replace(at, pair.size(), "\"h e\"");
  test::TempDir dir;
  Tokenizer tok = Tokenizer::load(dir.write("tokenizer.json", json));
  EXPECT_EQ(tok.encode(" the hello"), (Ids{kGthe, ' ', kHe, kLl, 'o'}));
}

TEST(TokenizerTiny, InvalidUtf8NamesOffset) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  try {
    tok.encode(
        "abc\xff"
        "def");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTokenizer);
    EXPECT_NE(e.message().find("byte offset 3"), std::string::npos) << e.message();
  }
  EXPECT_THROW(tok.encode("\xed\xa0\x80"), Error);  // UTF-8-encoded surrogate
  EXPECT_THROW(tok.encode("\xc3"), Error);          // truncated sequence
}

TEST(TokenizerTiny, LongWordsUseTheHeapPath) {
  Tokenizer tok = Tokenizer::load(tiny_dir());
  std::string word;
  for (int i = 0; i < 200; ++i) word += "hellothe";
  Ids ids = tok.encode(word);
  EXPECT_EQ(tok.decode(ids), word);
  // Per-chunk result must equal the short-word path's result on the same chunk.
  Ids chunk = tok.encode("hellothe");
  ASSERT_EQ(ids.size(), chunk.size() * 200);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], chunk[i % chunk.size()]);
}

TEST(TokenizeCli, EncodeDecodeAndBos) {
  TokenizeCliOptions opts;
  opts.tokenizer_path = tiny_dir();
  std::istringstream in("{\"text\": \"the\"}\r\n{\"text\": \"<|eot_id|>\", \"other\": 1}\n{\"text\": \"\"}");
  std::ostringstream out;
  EXPECT_EQ(run_tokenize_cli(opts, in, out), 0);
  EXPECT_EQ(out.str(), "{\"ids\":[116,256]}\n{\"ids\":[269]}\n{\"ids\":[]}\n");

  opts.add_bos = true;
  opts.ordinary = true;
  std::istringstream in2("{\"text\": \"<|\"}\n");
  std::ostringstream out2;
  run_tokenize_cli(opts, in2, out2);
  EXPECT_EQ(out2.str(), "{\"ids\":[268,60,124]}\n");

  TokenizeCliOptions dec;
  dec.tokenizer_path = tiny_dir();
  dec.decode = true;
  std::istringstream in3("{\"ids\": [116, 256, 10, 34, 226]}\n{\"ids\": []}\n");
  std::ostringstream out3;
  run_tokenize_cli(dec, in3, out3);
  EXPECT_EQ(out3.str(), "{\"text\":\"the\\n\\\"\xEF\xBF\xBD\"}\n{\"text\":\"\"}\n");
}

TEST(TokenizeCli, BadLinesNameTheLine) {
  TokenizeCliOptions opts;
  opts.tokenizer_path = tiny_dir();
  auto expect_error = [&](const TokenizeCliOptions& o, const std::string& input, const std::string& needle) {
    std::istringstream in(input);
    std::ostringstream out;
    try {
      run_tokenize_cli(o, in, out);
      ADD_FAILURE() << "no error for " << input;
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    }
  };
  expect_error(opts, "{\"text\": \"a\"}\nnot json\n", "stdin line 2: not valid JSON");
  expect_error(opts, "{\"txt\": \"a\"}\n", "stdin line 1: expected a JSON object {\"text\": string}");
  expect_error(opts, "{\"text\": 5}\n", "stdin line 1");
  expect_error(opts, "\n", "stdin line 1: empty line");
  TokenizeCliOptions dec = opts;
  dec.decode = true;
  expect_error(dec, "{\"ids\": [1, \"x\"]}\n", "stdin line 1: expected a JSON object {\"ids\"");
  expect_error(dec, "{\"ids\": [1]}\n{\"ids\": [99999]}\n", "stdin line 2: token id 99999");
}

// ---- the real Llama-3 tokenizer -----------------------------------------------------------

class Llama3 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_llama3()) return;
    auto t0 = std::chrono::steady_clock::now();
    tok_ = new Tokenizer(Tokenizer::load(llama3_dir()));
    load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  void SetUp() override {
    if (!have_llama3()) GTEST_SKIP() << "no " << llama3_dir() << "/tokenizer.json";
  }
  static Tokenizer* tok_;
  static double load_seconds_;
};
Tokenizer* Llama3::tok_ = nullptr;
double Llama3::load_seconds_ = 0;

TEST_F(Llama3, LoadsQuickly) {
  std::cout << "[ info ] llama3 tokenizer load: " << load_seconds_ * 1000 << " ms\n";
  EXPECT_LT(load_seconds_, 5.0);  // ~0.3 s on an idle core; generous for loaded CI machines
  EXPECT_EQ(tok_->vocab_size(), 128256);
  EXPECT_EQ(tok_->bos_id(), 128000);
  EXPECT_EQ(tok_->eos_id(), 128009);  // tokenizer_config.json: <|eot_id|>
  // No pad_token key, and this file names 128004 <|reserved_special_token_2|>: no default pad.
  EXPECT_FALSE(tok_->pad_id().has_value());
  EXPECT_EQ(tok_->added_tokens().size(), 256u);
}

TEST_F(Llama3, GoldenIdsAndDecode) {
  std::ifstream f(llama3_dir() + "/golden_public.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    const std::string text = j["text"];
    const Ids want = j["ids"].get<Ids>();
    const Ids got = tok_->encode(text);
    ASSERT_EQ(got, want) << "golden line " << n + 1 << ": " << text.substr(0, 80);
    ASSERT_EQ(tok_->decode(want), j["decoded"].get<std::string>()) << "golden line " << n + 1;
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST_F(Llama3, KnownEncodings) {
  EXPECT_EQ(tok_->encode("Hello world<|eot_id|> it's 12345 tests\n\n  ok"),
            (Ids{9906, 1917, 128009, 433, 596, 220, 4513, 1774, 7177, 271, 220, 5509}));
  const Ids plain = tok_->encode("<|eot_id|>", SpecialTokens::kOrdinary);
  EXPECT_GT(plain.size(), 1u);
  for (TokenId id : plain) EXPECT_FALSE(tok_->is_special(id));
  EXPECT_EQ(tok_->decode(plain), "<|eot_id|>");
  EXPECT_EQ(tok_->special_id("<|start_header_id|>"), 128006);
}

TEST_F(Llama3, RoundTrip) {
  for (const char* s :
       {"", " ", "naïve café", "你好，世界", "مرحبا", "👨‍👩‍👧‍👦 🇫🇷", "a\u0085b\u2028c",
        "x = [1,2,3]\r\n\tpass  ", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"}) {
    EXPECT_EQ(tok_->decode(tok_->encode(s)), s);
    EXPECT_EQ(tok_->decode(tok_->encode(s, SpecialTokens::kOrdinary)), s);
  }
}

TEST_F(Llama3, LoneByteDecodesToReplacement) {
  // Byte 0xE2 on its own: HF's decode gives U+FFFD.
  const TokenId e2 = *tok_->token_to_id("\xC3\xA2");  // "â" spells byte 0xE2
  EXPECT_EQ(tok_->token_bytes(e2), "\xE2");
  EXPECT_EQ(tok_->decode({e2}), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace sftgo
