// `sftgo-train score` and `sftgo-train generate`: use a Hugging Face-format checkpoint directly.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/format.h"
#include "sftgo/core/strings.h"
#include "sftgo/eval/generate.h"
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
  auto* sub = app.add_subcommand("score",
                                 "Log-probability of every token of JSONL {\"ids\"} or {\"text\"} lines under a model");
  sub->add_option("--model,-m", args->opts.model_dir, "Hugging Face checkpoint directory")->required();
  sub->add_option("--adapter,-a", args->opts.adapter_dir,
                  "LoRA adapter directory (PEFT layout) applied on top of --model");
  sub->add_option("--data,-d", args->data, "JSONL input, one {\"ids\": [...]} or {\"text\": ...} per line")->required();
  sub->add_option("--out,-o", args->out, "Output JSONL {\"ids\", \"logprobs\"} (default: stdout)")
      ->check(non_empty_value());
  sub->add_option("--tokenizer,-t", args->tokenizer, "Tokenizer for {\"text\"} lines (default: the model directory)");
  sub->add_option("--dtype", args->opts.dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->add_option("--device", args->opts.device, "auto | cpu | cuda");
  sub->add_option("--max-batch-tokens", args->opts.max_batch_tokens, "Padded tokens per forward pass")
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
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
        OutputStream out(args->out);  // the one output rule (sftgo/core/files.h)
        s = model::run_score_cli(opts, in, out);
        out.finish();  // names the file and the OS reason; removes the temporary file
      }
      std::fprintf(stderr, "%lld sequences, %lld scored tokens, mean NLL %.6f, perplexity %.4f\n",
                   static_cast<long long>(s.sequences), static_cast<long long>(s.scored_tokens), s.mean_nll,
                   s.perplexity);
      if (s.non_finite_tokens > 0)
        log_warn(
            "WARNING: {} of {} scored tokens of {} have non-finite log-probabilities (NaN/Inf; written as null "
            "with \"non_finite\": true): the model's weights are probably damaged, the numbers above mean nothing",
            s.non_finite_tokens, s.scored_tokens, opts.model_dir);
      return 0;
    };
  });
}

namespace {
// CLI11's Range lets NaN through (every comparison with NaN is false); these do not.
CLI::Validator finite_at_least(double lo) {
  return CLI::Validator(
      [lo](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !std::isfinite(v) || v < lo)
          return "expected a finite number >= " + sftgo::format("{}", lo) + ", got '" + text + "'";
        return "";
      },
      "FINITE>=" + sftgo::format("{}", lo));
}

CLI::Validator probability_mass() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !std::isfinite(v) || v <= 0.0 || v > 1.0)
          return "expected a number in (0, 1], got '" + text + "'";
        return "";
      },
      "(0,1]");
}
}  // namespace

void register_generate_command(CLI::App& app, std::function<int()>& selected) {
  auto req = std::make_shared<eval::GenerateRequest>();
  req->load.device = "auto";
  auto* sub = app.add_subcommand("generate", "Generate text from a Hugging Face checkpoint with a KV cache");
  sub->add_option("--model,-m", req->load.model_dir, "Hugging Face checkpoint directory")->required();
  sub->add_option("--adapter,-a", req->load.adapter_dir,
                  "LoRA adapter directory (PEFT layout) applied on top of --model");
  sub->add_option("--prompt,-p", req->prompt, "Prompt text")->required();
  sub->add_flag("--chat", req->chat,
                "Wrap the prompt as a user turn of the Llama-3 chat format (the training template, with the "
                "assistant header as generation prompt)");
  // 2^24: the most positions any model config may declare (see LlamaConfig::validate); the model's
  // own max_position_embeddings - prompt length is checked once both are known.
  sub->add_option("--max-new-tokens", req->options.max_new_tokens,
                  "Tokens to generate at most (prompt + new tokens must fit the model's max_position_embeddings)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  sub->add_option("--temperature", req->options.temperature, "0 = greedy")->check(finite_at_least(0.0));
  sub->add_option("--top-p", req->options.top_p, "Nucleus sampling mass (with temperature > 0)")
      ->check(probability_mass());
  sub->add_option("--seed", req->options.seed, "Sampling seed");
  sub->add_option("--tokenizer,-t", req->tokenizer_dir, "Tokenizer (default: the model directory)");
  sub->add_option("--dtype", req->load.dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->add_option("--device", req->load.device, "auto | cpu | cuda");
  sub->final_callback([req, &selected] {
    selected = [req] {
      std::cout << eval::generate_text(*req) << std::endl;
      return 0;
    };
  });
}

}  // namespace sftgo::apps
