// Helper for tests/python/test_model_*.py:
//   model_tool resave IN_DIR OUT_DIR MAX_SHARD_BYTES [bf16]  load an HF dir, save it with our writer
//   model_tool logits MODEL_DIR IDS.safetensors OUT.safetensors  logits [B,S,V] fp32 of "ids" [B,S]
//   model_tool generate MODEL_DIR N ID...                   greedy continuation, ids on stdout
#include <torch/torch.h>

#include <iostream>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/generate.h"
#include "sftgo/model/llama.h"

using namespace sftgo;
using namespace sftgo::model;

int main(int argc, char** argv) try {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "resave" && argc >= 5) {
    ModelOptions o;
    if (argc >= 6 && std::string(argv[5]) == "bf16") o.dtype = torch::kBFloat16;
    LlamaModel m = load_pretrained(argv[2], o);
    save_pretrained(*m, argv[3], SaveOptions{.max_shard_bytes = std::stoull(argv[4])});
    return 0;
  }
  if (cmd == "logits" && argc >= 5) {
    LlamaModel m = load_pretrained(argv[2]);
    auto f = io::SafetensorsFile::open(argv[3]);
    const io::TensorView* v = f->find("ids");
    SFTGO_CHECK(v && v->dtype == io::DType::kI64, ErrorKind::kData, argv[3], ": needs an I64 tensor 'ids'");
    torch::NoGradGuard ng;
    torch::Tensor ids = torch::from_blob(const_cast<std::byte*>(v->data), v->shape, torch::kInt64).clone();
    torch::Tensor logits = m->logits(m->forward(ids)).to(torch::kFloat).contiguous();
    io::write_safetensors(
        argv[4], {io::TensorSource::borrow("logits", io::DType::kF32, logits.sizes().vec(), logits.data_ptr())});
    return 0;
  }
  if (cmd == "generate" && argc >= 5) {
    LlamaModel m = load_pretrained(argv[2]);
    std::vector<int64_t> prompt;
    for (int i = 4; i < argc; ++i) prompt.push_back(std::stoll(argv[i]));
    GenerateOptions g;
    g.max_new_tokens = std::stoll(argv[3]);
    for (int64_t t : generate(*m, prompt, g)) std::cout << t << " ";
    std::cout << "\n";
    return 0;
  }
  std::cerr << "usage: model_tool resave IN OUT MAX_SHARD [bf16] | logits DIR IDS OUT | generate DIR N IDS...\n";
  return 2;
} catch (const sftgo::Error& e) {
  std::cerr << e.what() << "\n";
  return 1;
}
