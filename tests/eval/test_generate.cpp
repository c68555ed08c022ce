// Text generation from a checkpoint directory (src/eval/generate.cpp, `sftgo-train generate`'s body):
// the prompt ids, the completed generation options, decoding, and the whole call on a random tiny
// Llama saved with the demo tokenizer (1346 ids) and a vocabulary padded to 1408 rows, as the demo
// model's is.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/data/template.h"
#include "sftgo/eval/generate.h"
#include "sftgo/model/llama.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::eval {
namespace {

namespace fs = std::filesystem;

const std::string kDemoTokenizer = std::string(SFTGO_SOURCE_DIR) + "/data/demo/tokenizer";

const Tokenizer& demo_tokenizer() {
  static const Tokenizer tok = Tokenizer::load(kDemoTokenizer);
  return tok;
}

model::LlamaConfig tiny_config() {
  model::LlamaConfig c = model::LlamaConfig::preset("tiny");
  c.vocab_size = 1408;  // padded past the tokenizer's 1346 ids
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 48;
  c.rope_scaling->original_max_position_embeddings = 8;
  c.eos_token_ids = {7, 9};
  return c;
}

// A random model directory: config.json, model.safetensors and the demo tokenizer's files.
std::string save_tiny_model(const test_util::TempDir& dir) {
  const model::LlamaModel m(tiny_config(), model::ModelOptions{.seed = 3});
  const fs::path out = fs::path(dir.path()) / "model";
  model::save_pretrained(*m, out.string());
  for (const auto& f : fs::directory_iterator(kDemoTokenizer)) fs::copy_file(f.path(), out / f.path().filename());
  return out.string();
}

std::vector<int64_t> as_int64(const std::vector<TokenId>& ids) { return {ids.begin(), ids.end()}; }

// Chat: the training template's generation prompt; plain: BOS + the text. Literal ids pin both (the
// first from `generate --log-level debug` before the prompt moved out of apps/).
TEST(Generate, PromptIdsAreTheTrainingTemplatesOrBosAndText) {
  const Tokenizer& tok = demo_tokenizer();
  EXPECT_EQ(generation_prompt_ids(tok, "plain", false), (std::vector<int64_t>{1335, 79, 75, 731}));
  EXPECT_EQ(generation_prompt_ids(tok, "\u00a0Hello", true),
            (std::vector<int64_t>{1335, 1341, 754, 274, 1342, 198, 198, 39, 345, 78, 1344, 1341, 664, 483, 1342, 198,
                                  198}));
  for (const std::string& prompt : std::vector<std::string>{"Compute 8 * 5.", "", "  two  spaces\n"}) {
    EXPECT_EQ(generation_prompt_ids(tok, prompt, true),
              as_int64(data::render_generation_prompt(prompt, tok, data::TemplateKind::kLlama3)));
    std::vector<int64_t> plain{*tok.bos_id()};
    for (TokenId id : tok.encode_ordinary(prompt)) plain.push_back(id);
    EXPECT_EQ(generation_prompt_ids(tok, prompt, false), plain);
  }
  // Special-token text in a plain prompt stays text.
  EXPECT_EQ(generation_prompt_ids(tok, "<|eot_id|>", false).size(), 1 + tok.encode_ordinary("<|eot_id|>").size());
}

// Stop ids: the caller's, then the model's eos ids, then the tokenizer's; allowed: the ids both the
// model and the tokenizer have, minus holes in the tokenizer's id space.
TEST(Generate, OptionsStopAtEosAndAllowOnlyDecodableIds) {
  const Tokenizer& tok = demo_tokenizer();
  model::GenerateOptions base;
  base.max_new_tokens = 5;
  base.temperature = 0.7;
  base.top_p = 0.9;
  base.seed = 11;
  base.stop_ids = {3};
  for (int64_t vocab : {int64_t{1408}, int64_t{100}}) {
    model::LlamaConfig c = tiny_config();
    c.vocab_size = vocab;
    const model::GenerateOptions g = generation_options(base, c, tok);
    std::vector<int64_t> stops{3, 7, 9};
    if (auto eos = tok.eos_id()) stops.push_back(*eos);
    EXPECT_EQ(g.stop_ids, stops);
    EXPECT_EQ(g.max_new_tokens, 5);
    EXPECT_EQ(g.temperature, 0.7);
    EXPECT_EQ(g.top_p, 0.9);
    EXPECT_EQ(g.seed, 11u);
    ASSERT_EQ(static_cast<int64_t>(g.allowed.size()), std::min<int64_t>(vocab, tok.vocab_size()));
    int64_t holes = 0;
    for (size_t id = 0; id < g.allowed.size(); ++id) {
      bool decodable = true;
      try {
        tok.token_bytes(static_cast<TokenId>(id));
      } catch (const Error&) {
        decodable = false;
      }
      EXPECT_EQ(g.allowed[id] != 0, decodable) << "id " << id;
      holes += decodable ? 0 : 1;
    }
    EXPECT_LT(holes, static_cast<int64_t>(g.allowed.size()));
  }
}

TEST(Generate, DecodingDropsSpecialTokens) {
  const Tokenizer& tok = demo_tokenizer();
  std::vector<int64_t> ids = as_int64(tok.encode_ordinary("Hello there"));
  ids.insert(ids.begin(), *tok.bos_id());
  ids.push_back(*tok.eos_id());
  EXPECT_EQ(decode_generated(tok, ids), "Hello there");
  EXPECT_EQ(decode_generated(tok, {}), "");
}

// The one call equals its steps done by hand on the same directory; too many new tokens is a usage
// error naming the option and the most that fits.
TEST(Generate, GenerateTextIsTheStepsInOrder) {
  test_util::TempDir dir("sftgo_generate");
  GenerateRequest req;
  req.load.model_dir = save_tiny_model(dir);
  req.prompt = "Compute 8 * 5.";
  req.options.max_new_tokens = 12;
  for (bool chat : {true, false}) {
    for (double temperature : {0.0, 1.2}) {
      req.chat = chat;
      req.options.temperature = temperature;
      req.options.seed = 5;
      const Tokenizer& tok = demo_tokenizer();
      model::LlamaModel m = model::load_for_inference(req.load);
      const std::vector<int64_t> out = model::generate(*m, generation_prompt_ids(tok, req.prompt, chat),
                                                       generation_options(req.options, m->config(), tok));
      ASSERT_FALSE(out.empty());
      EXPECT_EQ(generate_text(req), decode_generated(tok, out)) << "chat " << chat << " temperature " << temperature;
    }
  }
  const auto prompt = static_cast<int64_t>(generation_prompt_ids(demo_tokenizer(), req.prompt, req.chat).size());
  const int64_t room = 48 - prompt;
  req.options.max_new_tokens = room;
  EXPECT_NO_THROW(generate_text(req));
  req.options.max_new_tokens = room + 1;
  try {
    generate_text(req);
    ADD_FAILURE() << "no error for " << room + 1 << " new tokens";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_EQ(e.message(), "--max-new-tokens " + std::to_string(room + 1) + ": the prompt's " + std::to_string(prompt) +
                               " tokens leave room for " + std::to_string(room) + " new tokens in " +
                               req.load.model_dir + " (max_position_embeddings 48)");
    EXPECT_EQ(e.hint(), "pass --max-new-tokens " + std::to_string(room) + " or less");
  }
  req.max_new_tokens_option = "max_new_tokens";
  try {
    generate_text(req);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.hint(), "pass max_new_tokens " + std::to_string(room) + " or less");
  }
  req.tokenizer_dir = dir.path() + "/missing";
  EXPECT_THROW(generate_text(req), Error);  // the tokenizer comes from tokenizer_dir when given
}

}  // namespace
}  // namespace sftgo::eval
