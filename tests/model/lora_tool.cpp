// Helper for tests/python/test_lora_peft.py (the C++ side of the PEFT parity checks):
//   lora_tool logits BASE ADAPTER IDS.safetensors OUT.safetensors
//       logits [B,S,V] fp32 of "ids" [B,S] under base + adapter (not merged)
//   lora_tool grads BASE ADAPTER IDS.safetensors OUT.safetensors [ckpt]
//       "loss" (mean next-token cross-entropy over all positions) and the gradient of every adapter
//       tensor under its PEFT name; base weights frozen; [ckpt] = with activation checkpointing
//   lora_tool resave BASE ADAPTER OUT_ADAPTER   load an adapter and save it with our writer
#include <torch/torch.h>

#include <iostream>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/lora.h"

using namespace sftgo;
using namespace sftgo::model;

namespace {
torch::Tensor read_ids(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  const io::TensorView* v = f->find("ids");
  SFTGO_CHECK(v && v->dtype == io::DType::kI64, ErrorKind::kData, path, ": needs an I64 tensor 'ids'");
  return torch::from_blob(const_cast<std::byte*>(v->data), v->shape, torch::kInt64).clone();
}

void write(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<torch::Tensor> keep;
  std::vector<io::TensorSource> src;
  for (auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(torch::kFloat).contiguous());
    src.push_back(io::TensorSource::borrow(name, io::DType::kF32, keep.back().sizes().vec(), keep.back().data_ptr()));
  }
  io::write_safetensors(path, src);
}
}  // namespace

int main(int argc, char** argv) try {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if ((cmd == "logits" || cmd == "grads") && argc >= 6) {
    LlamaModel m = load_pretrained(argv[2]);
    load_lora_adapter(*m, argv[3]);
    torch::Tensor ids = read_ids(argv[4]);
    if (cmd == "logits") {
      torch::NoGradGuard ng;
      write(argv[5], {{"logits", m->logits(m->forward(ids))}});
      return 0;
    }
    m->set_activation_checkpointing(argc >= 7 && std::string(argv[6]) == "ckpt");
    const int64_t s = ids.size(1);
    torch::Tensor logits = m->logits(m->forward(ids));  // [B,S,V]
    torch::Tensor loss = torch::nn::functional::cross_entropy(logits.slice(1, 0, s - 1).reshape({-1, logits.size(-1)}),
                                                              ids.slice(1, 1).reshape({-1}));
    loss.backward();
    std::vector<std::pair<std::string, torch::Tensor>> out = {{"loss", loss.detach().reshape({1})}};
    for (auto& [name, p] : lora_named_parameters(*m)) out.emplace_back(name, p.grad());
    for (auto& p : m->parameters())
      SFTGO_CHECK(p.requires_grad() || !p.grad().defined(), ErrorKind::kInternal, "a frozen weight got a gradient");
    write(argv[5], out);
    return 0;
  }
  if (cmd == "resave" && argc >= 5) {
    LlamaModel m = load_pretrained(argv[2]);
    load_lora_adapter(*m, argv[3]);
    save_lora_adapter(*m, argv[4]);
    return 0;
  }
  std::cerr << "usage: lora_tool logits|grads BASE ADAPTER IDS OUT [ckpt] | resave BASE ADAPTER OUT\n";
  return 2;
} catch (const sftgo::Error& e) {
  std::cerr << e.what() << "\n";
  return 1;
}
