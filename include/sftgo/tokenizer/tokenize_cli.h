// `sftgo-train tokenize`: JSONL in, JSONL out, for parity checks against HF and for inspecting data.
//   encode (default): each input line {"text": "..."} -> {"ids": [..]}; no special tokens are added
//                     unless add_bos (then bos_id() is prepended).
//   decode:           each input line {"ids": [..]}   -> {"text": "..."} (invalid UTF-8 -> U+FFFD).
//   ordinary:         special-token strings in the text stay plain text (SpecialTokens::kOrdinary).
// Lines are answered in order, one output line per input line; a blank or malformed line throws
// sftgo::Error naming "stdin line N" and what was expected.
#pragma once

#include <iosfwd>
#include <string>

namespace sftgo {

struct TokenizeCliOptions {
  std::string tokenizer_path;  // directory with tokenizer.json, or the file itself
  bool decode = false;
  bool ordinary = false;
  bool add_bos = false;
};

// Returns the process exit code (0); errors are thrown as sftgo::Error.
int run_tokenize_cli(const TokenizeCliOptions& opts, std::istream& in, std::ostream& out);

}  // namespace sftgo
