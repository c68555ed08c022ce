// `sftgo-train score` and `sftgo-train generate`: use a Hugging Face-format checkpoint directly.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/model/generate.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/score.h"
#include "sftgo/tokenizer/tokenizer.h"

#include <torch/cuda.h>

namespace sftgo::apps {

void register_score_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    model::ScoreCliOptions opts;
    std::string data;
    std::string out;
    std::string tokenizer;
  };
  auto args = std::make_shared<Args>();
  args->opts.device = "auto";
  auto* sub = app.add_subcommand("score", "Log-probability of every token of JSONL {\"ids\"} or {\"text\"} lines under a model");
  sub->add_option("--model,-m", args->opts.model_dir, "Hugging Face checkpoint directory")->required();
  sub->add_option("--data,-d", args->data, "JSONL input, one {\"ids\": [...]} or {\"text\": ...} per line")->required();
  sub->add_option("--out,-o", args->out, "Output JSONL {\"ids\", \"logprobs\"} (default: stdout)");
  sub->add_option("--tokenizer,-t", args->tokenizer, "Tokenizer for {\"text\"} lines (default: the model directory)");
  sub->add_option("--dtype", args->opts.dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->add_option("--device", args->opts.device, "auto | cpu | cuda");
  sub->add_option("--max-batch-tokens", args->opts.max_batch_tokens, "Padded tokens per forward pass");
  sub->final_callback([args, &selected] {
    selected = [args] {
      std::ifstream in(args->data);
      SFTGO_CHECK(in.good(), ErrorKind::kIo, args->data, ": cannot open for reading");
      model::ScoreCliOptions opts = args->opts;
      std::shared_ptr<Tokenizer> tok;
      const std::string tok_path = args->tokenizer.empty() ? opts.model_dir : args->tokenizer;
      opts.encode = [tok, tok_path](const std::string& text) mutable {
        if (!tok) tok = std::make_shared<Tokenizer>(Tokenizer::load(tok_path));  // only when text lines appear
        auto ids = tok->encode_ordinary(text);
        std::vector<int64_t> out(ids.begin(), ids.end());
        if (auto bos = tok->bos_id()) out.insert(out.begin(), *bos);
        return out;
      };
      model::ScoreSummary s;
      if (args->out.empty()) {
        s = model::run_score_cli(opts, in, std::cout);
      } else {
        std::ofstream out(args->out + ".tmp");
        s = model::run_score_cli(opts, in, out);
        out.close();
        SFTGO_CHECK(out.good(), ErrorKind::kIo, args->out, ": write failed");
        std::rename((args->out + ".tmp").c_str(), args->out.c_str());
      }
      std::fprintf(stderr, "%lld sequences, %lld scored tokens, mean NLL %.6f, perplexity %.4f\n",
                   static_cast<long long>(s.sequences), static_cast<long long>(s.scored_tokens), s.mean_nll, s.perplexity);
      return 0;
    };
  });
}

void register_generate_command(CLI::App& app, std::function<int()>& selected) {
  struct Args {
    std::string model_dir, prompt, tokenizer, dtype = "float32", device = "auto";
    bool chat = false;
    model::GenerateOptions gen;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("generate", "Generate text from a Hugging Face checkpoint with a KV cache");
  sub->add_option("--model,-m", args->model_dir, "Hugging Face checkpoint directory")->required();
  sub->add_option("--prompt,-p", args->prompt, "Prompt text")->required();
  sub->add_flag("--chat", args->chat, "Wrap the prompt as a user turn of the Llama-3 chat format");
  sub->add_option("--max-new-tokens", args->gen.max_new_tokens, "Tokens to generate at most");
  sub->add_option("--temperature", args->gen.temperature, "0 = greedy");
  sub->add_option("--top-p", args->gen.top_p, "Nucleus sampling mass (with temperature > 0)");
  sub->add_option("--seed", args->gen.seed, "Sampling seed");
  sub->add_option("--tokenizer,-t", args->tokenizer, "Tokenizer (default: the model directory)");
  sub->add_option("--dtype", args->dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->add_option("--device", args->device, "auto | cpu | cuda");
  sub->final_callback([args, &selected] {
    selected = [args] {
      Tokenizer tok = Tokenizer::load(args->tokenizer.empty() ? args->model_dir : args->tokenizer);
      model::ModelOptions mo;
      mo.dtype = parse_dtype(args->dtype, "--dtype", ErrorKind::kUsage);
      mo.device = parse_device(args->device, "--device", ErrorKind::kUsage);
      mo.init_weights = false;
      model::LlamaModel m = model::load_pretrained(args->model_dir, mo);
      std::vector<int64_t> prompt;
      auto append = [&](const std::vector<TokenId>& ids) { prompt.insert(prompt.end(), ids.begin(), ids.end()); };
      if (auto bos = tok.bos_id()) prompt.push_back(*bos);
      if (args->chat) {
        // Llama-3 chat format, as the HF template renders one user turn plus the generation prompt.
        prompt.push_back(tok.special_id("<|start_header_id|>"));
        append(tok.encode_ordinary("user"));
        prompt.push_back(tok.special_id("<|end_header_id|>"));
        append(tok.encode_ordinary("\n\n" + trim(args->prompt)));
        prompt.push_back(tok.special_id("<|eot_id|>"));
        prompt.push_back(tok.special_id("<|start_header_id|>"));
        append(tok.encode_ordinary("assistant"));
        prompt.push_back(tok.special_id("<|end_header_id|>"));
        append(tok.encode_ordinary("\n\n"));
      } else {
        append(tok.encode_ordinary(args->prompt));
      }
      model::GenerateOptions g = args->gen;
      for (int64_t id : m->config().eos_token_ids) g.stop_ids.push_back(id);
      if (auto eos = tok.eos_id()) g.stop_ids.push_back(*eos);
      std::vector<int64_t> out = model::generate(*m, prompt, g);
      std::vector<TokenId> text_ids;
      for (int64_t id : out)
        if (!tok.is_special(static_cast<TokenId>(id))) text_ids.push_back(static_cast<TokenId>(id));
      std::cout << tok.decode(text_ids) << std::endl;
      return 0;
    };
  });
}

}  // namespace sftgo::apps
