// `sftgo-train eval`: lm-evaluation-harness-style multiple-choice evaluation of a HF checkpoint.
#include <torch/cuda.h>

#include <iostream>
#include <limits>

#include "commands.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/eval/evaluate.h"

namespace sftgo::apps {

void register_eval_command(CLI::App& app, std::function<int()>& selected) {
  auto opts = std::make_shared<eval::EvalOptions>();
  opts->device = "auto";
  auto* sub = app.add_subcommand(
      "eval", "Log-likelihood multiple-choice evaluation (lm-eval style): " + join(eval::task_names(), ", "));
  sub->add_option("--model,-m", opts->model_dir, "Hugging Face checkpoint directory")->required();
  sub->add_option("--adapter,-a", opts->adapter_dir, "LoRA adapter directory (PEFT layout) applied on top of --model");
  sub->add_option("--task", opts->task, "Task name")->required();
  sub->add_option("--data,-d", opts->data_path, "Task JSONL (Hugging Face dataset fields, see docs/evaluation.md)")
      ->required();
  sub->add_option("--shots,-k", opts->shots, "Few-shot examples per question (first K of the few-shot pool)");
  sub->add_option("--fewshot-data", opts->fewshot_path,
                  "Few-shot pool JSONL (default: the --data file, skipping the question itself)");
  sub->add_option("--limit,-n", opts->limit, "Evaluate the first N documents only (N >= 1)")
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
  sub->add_option("--out,-o", opts->out_path, "Write the results as JSON")->check(non_empty_value());
  sub->add_option("--samples", opts->samples_path, "Write per-document contexts, log-likelihoods and metrics (JSONL)")
      ->check(non_empty_value());
  sub->add_option("--tokenizer,-t", opts->tokenizer_path, "Tokenizer (default: the model directory)");
  sub->add_option("--device", opts->device, "auto | cpu | cuda | cuda:N");
  sub->add_option("--dtype", opts->dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  sub->add_option("--batch-size", opts->batch_size, "Sequences per forward pass at most");
  sub->add_option("--max-batch-tokens", opts->max_batch_tokens, "Padded tokens per forward pass at most");
  sub->add_option("--max-length", opts->max_length,
                  "Context window in tokens; longer inputs lose tokens on the left (default: the model's)");
  sub->add_flag("!--no-share-context", opts->share_context,
                "Score every choice as a full sequence (default: each context once, continuations on its KV cache)");
  sub->final_callback([opts, &selected] {
    selected = [opts] {
      eval::EvalOptions o = *opts;
      eval::TaskResult r = eval::run_eval(o);
      if (r.non_finite_logliks > 0)
        log_warn(
            "WARNING: {} choice log-likelihoods of {} are NaN/Inf: the model's weights are probably damaged and "
            "the metrics below mean nothing (results JSON: non_finite_loglikelihoods = {})",
            r.non_finite_logliks, o.model_dir, r.non_finite_logliks);
      if (!o.out_path.empty()) write_file_atomic(o.out_path, eval::result_json(r, o));
      std::cout << eval::result_table(r);
      // The files above are kept for diagnosis, but a job whose metrics mean nothing is not complete.
      SFTGO_CHECK_HINT(r.non_finite_logliks == 0, ErrorKind::kNumeric,
                       "check the model (and adapter) weights, or evaluate in --dtype float32", "eval: ",
                       r.non_finite_logliks, " choice log-likelihoods are NaN/Inf, the first in document ",
                       r.first_non_finite_doc, " of ", o.data_path, " (", o.model_dir, ")");
      return 0;
    };
  });
}

}  // namespace sftgo::apps
