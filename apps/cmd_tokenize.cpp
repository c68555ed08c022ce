// `sftgo-train tokenize`: JSONL text -> ids (or ids -> text with --decode) on stdin/stdout.
#include <iostream>

#include "commands.h"
#include "sftgo/tokenizer/tokenize_cli.h"

namespace sftgo::apps {

void register_tokenize_command(CLI::App& app, std::function<int()>& selected) {
  auto opts = std::make_shared<TokenizeCliOptions>();
  auto* sub = app.add_subcommand("tokenize", "Tokenize JSONL {\"text\"} lines from stdin to {\"ids\"} lines on stdout");
  sub->add_option("--tokenizer,-t", opts->tokenizer_path, "Directory with tokenizer.json, or the file")->required();
  sub->add_flag("--decode", opts->decode, "Read {\"ids\": [...]} lines and write {\"text\": ...}");
  sub->add_flag("--ordinary", opts->ordinary, "Treat special-token strings in the text as plain text");
  sub->add_flag("--add-bos", opts->add_bos, "Prepend the BOS token id");
  sub->final_callback([opts, &selected] {
    selected = [opts] {
      std::ios::sync_with_stdio(false);
      return run_tokenize_cli(*opts, std::cin, std::cout);
    };
  });
}

}  // namespace sftgo::apps
