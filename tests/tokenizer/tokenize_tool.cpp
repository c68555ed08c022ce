// Stand-in for `sftgo-train tokenize` until the app wires run_tokenize_cli into its CLI:
//   tokenize_tool --tokenizer PATH [--decode] [--ordinary] [--add-bos] < in.jsonl > out.jsonl
#include <cstring>
#include <iostream>

#include "sftgo/core/error.h"
#include "sftgo/tokenizer/tokenize_cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  sftgo::TokenizeCliOptions opts;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tokenizer") && i + 1 < argc)
      opts.tokenizer_path = argv[++i];
    else if (!std::strcmp(argv[i], "--decode"))
      opts.decode = true;
    else if (!std::strcmp(argv[i], "--ordinary"))
      opts.ordinary = true;
    else if (!std::strcmp(argv[i], "--add-bos"))
      opts.add_bos = true;
    else if (!std::strcmp(argv[i], "--help")) {
      std::cout << "usage: tokenize_tool --tokenizer PATH [--decode] [--ordinary] [--add-bos]\n";
      return 0;
    } else {
      std::cerr << "error: unknown argument " << argv[i] << "\n";
      return 2;
    }
  }
  if (opts.tokenizer_path.empty()) {
    std::cerr << "error: --tokenizer PATH is required\n";
    return 2;
  }
  try {
    return sftgo::run_tokenize_cli(opts, std::cin, std::cout);
  } catch (const sftgo::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
