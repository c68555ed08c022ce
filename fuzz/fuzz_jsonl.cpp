// libFuzzer target for the SFT data readers (LIMA / Alpaca / chat / ShareGPT JSONL, JSON arrays) and
// the chat templates that render what they accept. The first input byte picks the options:
//   bit 0: on_bad_record stop (0) or skip (1);  bits 1-2: format auto, lima, alpaca, chat.
// The rest is the data file. Reading must succeed or throw sftgo::Error; every conversation read is
// rendered with every template (with and without a generation prompt) by the demo tokenizer, and
// each rendering must be consistent: one label per id, a label is the id or ignored, and the
// generation prompt of the conversation up to its last assistant turn is a prefix of the training
// ids. Build and run: scripts/fuzz_jsonl.sh
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/data/conversation.h"
#include "sftgo/data/template.h"
#include "sftgo/tokenizer/tokenizer.h"

namespace {

using namespace sftgo;
using namespace sftgo::data;

const Tokenizer& demo_tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    try {
      return std::make_unique<Tokenizer>(Tokenizer::load(SFTGO_FUZZ_TOKENIZER));
    } catch (const Error& e) {
      std::fprintf(stderr, "fuzz_jsonl: cannot load %s: %s\n", SFTGO_FUZZ_TOKENIZER, e.what());
      std::abort();
    }
  }();
  return *tok;
}

void check_rendering(const Conversation& conv) {
  const Tokenizer& tok = demo_tokenizer();
  for (TemplateKind kind : {TemplateKind::kLlama3, TemplateKind::kAlpaca, TemplateKind::kPlain}) {
    TokenizedExample ex;
    try {
      ex = apply_template(conv, tok, kind, std::string("sys"));
    } catch (const Error&) {
      continue;  // text the tokenizer rejects is reported, not a crash
    }
    ex.check_consistent();
    for (size_t t = 0; t < ex.ids.size(); ++t)
      if (ex.labels[t] != kIgnoreLabel && ex.labels[t] != ex.ids[t]) std::abort();
    // Cut before the last assistant turn: its generation prompt must be a prefix of ex.ids.
    Conversation head = conv;
    while (!head.messages.empty() && head.messages.back().role != Role::kAssistant) head.messages.pop_back();
    if (head.messages.empty()) continue;
    head.messages.pop_back();
    if (head.messages.empty() || head.messages.back().role == Role::kAssistant) continue;
    TokenizedExample gen = apply_template(head, tok, kind, std::string("sys"), /*add_generation_prompt=*/true);
    if (gen.ids.size() > ex.ids.size() || !std::equal(gen.ids.begin(), gen.ids.end(), ex.ids.begin())) {
      std::fprintf(stderr, "generation prompt is not a prefix of the training ids (%s)\n", template_kind_name(kind));
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  sftgo::init_logging(0, 1, sftgo::LogLevel::kOff);  // skipped records would log a warning each
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string path = "/dev/shm/sftgo_fuzz_jsonl_" + std::to_string(getpid()) + ".jsonl";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data + 1), static_cast<std::streamsize>(size - 1));
  }
  const OnBadRecord on_bad = (data[0] & 1) ? OnBadRecord::kSkip : OnBadRecord::kStop;
  const DataFormat formats[] = {DataFormat::kAuto, DataFormat::kLima, DataFormat::kAlpaca, DataFormat::kChat};
  const DataFormat format = formats[(data[0] >> 1) & 3];
  try {
    read_conversations(path, format, on_bad, [](Conversation&& conv) { check_rendering(conv); });
  } catch (const Error&) {
  }
  return 0;
}
