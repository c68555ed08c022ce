// `sftgo data`: statistics and a token-level dump of the prepared dataset, or its conversion to
// `messages` JSONL.
#include "sftgo/data/cli.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/core/timer.h"

namespace sftgo::data {
namespace {

bool is_terminal(const std::ostream& out) {
  if (&out == &std::cout) return ::isatty(STDOUT_FILENO) != 0;
  if (&out == &std::cerr || &out == &std::clog) return ::isatty(STDERR_FILENO) != 0;
  return false;
}

// Escapes newlines and control bytes so one example stays readable on a few lines.
std::string visible(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n')
      out += "\\n\n";
    else if (c == '\t')
      out += "\\t";
    else if (static_cast<unsigned char>(c) < 0x20)
      out += "?";
    else
      out += c;
  }
  return out;
}

void print_histogram(const std::vector<int64_t>& lengths, int64_t max_seq_len, std::ostream& out) {
  constexpr int kBins = 10;
  const int64_t top = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  const int64_t width = std::max<int64_t>(1, (top + kBins - 1) / kBins);
  std::vector<int64_t> counts(kBins, 0);
  for (int64_t len : lengths) counts[static_cast<size_t>(std::min<int64_t>(kBins - 1, (len - 1) / width))]++;
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  out << "length histogram (tokens; max_seq_len " << max_seq_len << "):\n";
  for (int b = 0; b < kBins; ++b) {
    const int64_t lo = b * width + 1, hi = (b + 1) * width;
    const int bar = most > 0 ? static_cast<int>(40 * counts[b] / most) : 0;
    out << "  " << std::setw(6) << lo << "-" << std::left << std::setw(6) << hi << std::right << " " << std::setw(8)
        << counts[b] << " " << std::string(static_cast<size_t>(bar), '#') << "\n";
  }
}

}  // namespace

int run_data_cli(const DataOptions& opts, const Tokenizer& tok, int dump_n, std::ostream& out) {
  Timer timer;
  PreparedDataset ds = prepare_dataset(opts, tok);
  const double secs = timer.seconds();
  const DataStats& s = ds.stats;
  out << "data: " << opts.path << " (format " << ds.data_format << ", template "
      << template_kind_name(opts.template_kind) << ", max_seq_len " << opts.max_seq_len << ", truncation "
      << truncation_name(opts.truncation) << ")\n";
  out << "  prepared in " << std::fixed << std::setprecision(3) << secs << " s"
      << (ds.from_cache           ? " (from cache " + ds.cache_path + ")"
          : ds.cache_path.empty() ? ""
                                  : " (cached to " + ds.cache_path + ")")
      << "\n";
  const auto row = [&](const char* label, int64_t value) {
    out << "  " << std::left << std::setw(34) << label << std::right << value << "\n";
  };
  row("records:", s.records);
  row("bad records skipped:", s.bad_records);
  row("examples:", s.examples);
  row("tokens:", s.tokens);
  row("trained tokens:", s.trained_tokens);
  out << "  " << std::left << std::setw(34) << "trained fraction:" << std::right << std::setprecision(1)
      << (s.tokens ? 100.0 * static_cast<double>(s.trained_tokens) / static_cast<double>(s.tokens) : 0.0) << "%\n";
  row("truncated:", s.truncated);
  row("dropped (too long):", s.dropped_too_long);
  row("dropped (no trained tokens left):", s.dropped_no_trained);
  row("longest example:", s.max_len);
  print_histogram(ds.lengths(), opts.max_seq_len, out);

  const bool colour = is_terminal(out);
  const std::string on = colour ? "\033[1;32m" : "[[", off = colour ? "\033[0m" : "]]";
  const int n = std::min<int>(dump_n, static_cast<int>(ds.examples.size()));
  if (n > 0)
    out << "first " << n << " examples (trained tokens marked " << (colour ? "green" : "[[like this]]") << "):\n";
  for (int i = 0; i < n; ++i) {
    const TokenizedExample& ex = ds.examples[static_cast<size_t>(i)];
    out << "--- example " << ex.index << " (" << ex.source.file << ":" << ex.source.line << ", " << ex.ids.size()
        << " tokens, " << ex.num_trained() << " trained" << (ex.truncated ? ", truncated" : "") << ")\n";
    // Decode runs of equally-labelled tokens together so multi-byte characters stay whole.
    size_t t = 0;
    while (t < ex.ids.size()) {
      const bool trained = ex.labels[t] != kIgnoreLabel;
      std::vector<TokenId> run;
      while (t < ex.ids.size() && (ex.labels[t] != kIgnoreLabel) == trained) run.push_back(ex.ids[t++]);
      const std::string text = visible(tok.decode(run));
      out << (trained ? on + text + off : text);
    }
    out << "\n";
    out << "  ids: ";
    for (size_t k = 0; k < ex.ids.size(); ++k) out << (k ? " " : "") << ex.ids[k];
    out << "\n";
  }
  return 0;
}


int run_data_convert(const DataOptions& opts, const std::string& out_path, std::ostream& out, std::ostream& log) {
  namespace fs = std::filesystem;
  SFTGO_CHECK(!out_path.empty(), ErrorKind::kUsage, "--convert needs an output path (or - for stdout)");
  const bool to_stdout = out_path == "-";
  if (!to_stdout) {
    std::error_code ec;
    SFTGO_CHECK_HINT(!fs::equivalent(fs::path(out_path), fs::path(opts.path), ec), ErrorKind::kUsage,
                     "write the converted file somewhere else", "--convert ", out_path, " is the input data file");
  }
  std::unique_ptr<OutputFile> file;  // the one output rule (sftgo/core/files.h)
  if (!to_stdout) file = std::make_unique<OutputFile>(out_path);
  int64_t with_input = 0;
  std::string line;
  ReadStats rs = read_conversations(opts.path, opts.format, opts.on_bad_record, [&](Conversation&& conv) {
    with_input += !conv.input.empty();
    line = to_messages_json(conv);
    line += '\n';
    if (file)
      file->write(line);
    else
      out << line;
  });
  SFTGO_CHECK_HINT(rs.records > 0, ErrorKind::kData, "check data.path and data.format", "no usable records in ",
                   opts.path, " (", rs.bad, " bad records skipped)");
  if (file) {
    file->finish();
  } else {
    out.flush();
    SFTGO_CHECK(out.good(), ErrorKind::kIo, "writing the converted records to stdout failed");
  }
  if (with_input > 0 && opts.template_kind == TemplateKind::kAlpaca) {
    log << "warning: " << with_input << " records have an Alpaca 'input'; the alpaca template prints it under "
        << "'### Input:', but in messages JSONL it is part of the user message (printed under '### Instruction:')\n";
  }
  log << "converted " << rs.records << " records of " << opts.path << " (format " << data_format_name(rs.format)
      << ") to " << (to_stdout ? std::string("stdout") : out_path) << " as messages JSONL";
  if (rs.bad > 0) log << "; skipped " << rs.bad << " bad records";
  log << "\n";
  return 0;
}

}  // namespace sftgo::data
