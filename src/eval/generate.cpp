// Text generation from a checkpoint directory (eval/generate.h).
#include "sftgo/eval/generate.h"

#include <algorithm>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/data/template.h"
#include "sftgo/model/llama.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace sftgo::eval {

namespace {
std::string join_prompt_ids(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s;
}
}  // namespace

std::vector<int64_t> generation_prompt_ids(const Tokenizer& tok, const std::string& prompt, bool chat) {
  std::vector<TokenId> ids;
  if (chat) {
    ids = data::render_generation_prompt(prompt, tok, data::TemplateKind::kLlama3);
  } else {
    if (auto bos = tok.bos_id()) ids.push_back(*bos);
    const auto text = tok.encode_ordinary(prompt);
    ids.insert(ids.end(), text.begin(), text.end());
  }
  return {ids.begin(), ids.end()};
}

model::GenerateOptions generation_options(const model::GenerateOptions& base, const model::LlamaConfig& config,
                                          const Tokenizer& tok) {
  model::GenerateOptions g = base;
  for (int64_t id : config.eos_token_ids) g.stop_ids.push_back(id);
  if (auto eos = tok.eos_id()) g.stop_ids.push_back(*eos);
  const int64_t n = std::min<int64_t>(config.vocab_size, tok.vocab_size());
  g.allowed.assign(static_cast<size_t>(n), 1);
  for (int64_t id = 0; id < n; ++id) {
    try {
      tok.token_bytes(static_cast<TokenId>(id));
    } catch (const Error&) {
      g.allowed[static_cast<size_t>(id)] = 0;  // a hole in the tokenizer's id space
    }
  }
  return g;
}

std::string decode_generated(const Tokenizer& tok, const std::vector<int64_t>& ids) {
  std::vector<TokenId> text_ids;
  for (int64_t id : ids)
    if (!tok.is_special(static_cast<TokenId>(id))) text_ids.push_back(static_cast<TokenId>(id));
  return tok.decode(text_ids);
}

std::string generate_text(const GenerateRequest& request) {
  const model::InferenceLoadOptions& load = request.load;
  const Tokenizer tok = Tokenizer::load(request.tokenizer_dir.empty() ? load.model_dir : request.tokenizer_dir);
  model::LlamaModel m = model::load_for_inference(load);
  const std::vector<int64_t> prompt = generation_prompt_ids(tok, request.prompt, request.chat);
  log_debug("generate: prompt ids [{}]", join_prompt_ids(prompt));
  const int64_t room = model::max_new_tokens_bound(*m, static_cast<int64_t>(prompt.size()));
  const int64_t wanted = request.options.max_new_tokens;
  const std::string& option = request.max_new_tokens_option;
  SFTGO_CHECK_HINT(wanted <= room, ErrorKind::kUsage, "pass " + option + " " + std::to_string(room) + " or less",
                   option, " ", wanted, ": the prompt's ", prompt.size(), " tokens leave room for ", room,
                   " new tokens in ", load.model_dir, " (max_position_embeddings ",
                   m->config().max_position_embeddings, ")");
  const model::GenerateOptions g = generation_options(request.options, m->config(), tok);
  return decode_generated(tok, model::generate(*m, prompt, g));
}

}  // namespace sftgo::eval
