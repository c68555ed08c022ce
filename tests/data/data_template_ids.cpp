// Prints the template ids of conversations as JSONL, for the HF parity test.
// Usage: sftgo_data_template_ids <tokenizer dir> <conversations.jsonl> [template] [--generation-prompt]
// Each input line is {"messages": [{"role", "content"}, ...]}; conversations are taken as they are
// (no reader validation) so the test can also probe edge cases. Output: {"ids": [...], "labels": [...]}.
// --generation-prompt renders with add_generation_prompt (HF apply_chat_template's flag).
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "sftgo/core/error.h"
#include "sftgo/data/template.h"

int main(int argc, char** argv) {
  using namespace sftgo::data;
  bool generation_prompt = false;
  if (argc > 1 && std::string(argv[argc - 1]) == "--generation-prompt") {
    generation_prompt = true;
    --argc;
  }
  if (argc < 3) {
    std::cerr << "usage: " << argv[0]
              << " <tokenizer dir> <conversations.jsonl> [llama3|alpaca|plain] [--generation-prompt]\n";
    return 2;
  }
  try {
    auto tok = sftgo::Tokenizer::load(argv[1]);
    TemplateKind kind = argc > 3 ? parse_template_kind(argv[3]) : TemplateKind::kLlama3;
    std::ifstream in(argv[2]);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line);
      Conversation conv;
      for (const auto& m : j.at("messages")) {
        const std::string role = m.at("role").get<std::string>();
        Role r = role == "system" ? Role::kSystem : role == "user" ? Role::kUser : Role::kAssistant;
        conv.messages.push_back({r, m.at("content").get<std::string>()});
      }
      TokenizedExample ex = apply_template(conv, tok, kind, std::nullopt, generation_prompt);
      std::cout << nlohmann::json{{"ids", ex.ids}, {"labels", ex.labels}}.dump() << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
