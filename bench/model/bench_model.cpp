// Model benchmarks, driven by bench_model.py (which runs the transformers side and prints ratios):
//   bench_model train B S STEPS THREADS   forward+backward tokens/s of the bench config (JSON line)
//   bench_model load DIR                  load a checkpoint in fp32: seconds, weights and peak RSS
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "sftgo/core/error.h"
#include "sftgo/model/llama.h"

using namespace sftgo::model;

// VmHWM, not getrusage: ru_maxrss survives fork+exec, so a child of a big driver would report the
// driver's peak.
static double peak_rss_mb() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  double kb = 0;
  while (f && std::fgets(line, sizeof(line), f))
    if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
  if (f) std::fclose(f);
  return kb / 1024.0;
}

// Must match CONFIG in bench_model.py.
static LlamaConfig bench_config() {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 8192;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 32;
  c.tie_word_embeddings = false;
  return c;
}

int main(int argc, char** argv) try {
  const std::string cmd = argc > 1 ? argv[1] : "";
  using clock = std::chrono::steady_clock;
  if (cmd == "train" && argc >= 6) {
    const int64_t b = std::stoll(argv[2]), s = std::stoll(argv[3]), steps = std::stoll(argv[4]);
    torch::set_num_threads(std::stoi(argv[5]));
    LlamaModel model(bench_config(), ModelOptions{.seed = 0});
    torch::manual_seed(0);
    torch::Tensor ids = torch::randint(0, 8192, {b, s}, torch::kInt64);
    auto step = [&] {
      torch::Tensor logits = model->logits(model->forward(ids));
      torch::Tensor loss = torch::nn::functional::cross_entropy(logits.slice(1, 0, s - 1).reshape({-1, 8192}),
                                                                ids.slice(1, 1).reshape({-1}));
      loss.backward();
      model->zero_grad();
    };
    step();  // warm-up (allocator, thread pool)
    auto t0 = clock::now();
    for (int64_t i = 0; i < steps; ++i) step();
    double sec = std::chrono::duration<double>(clock::now() - t0).count();
    std::printf("{\"impl\": \"sftgo\", \"tokens_per_s\": %.1f, \"peak_rss_mb\": %.1f, \"sec_per_step\": %.4f}\n",
                b * s * steps / sec, peak_rss_mb(), sec / steps);
    return 0;
  }
  if (cmd == "load" && argc >= 3) {
    double before = peak_rss_mb();
    auto t0 = clock::now();
    LlamaModel model = load_pretrained(argv[2]);
    double sec = std::chrono::duration<double>(clock::now() - t0).count();
    double weights = 0;
    for (const auto& p : model->parameters()) weights += p.numel() * p.element_size();
    std::printf(
        "{\"impl\": \"sftgo\", \"load_s\": %.2f, \"weights_mb\": %.1f, \"rss_before_mb\": %.1f, "
        "\"peak_rss_mb\": %.1f}\n",
        sec, weights / 1048576.0, before, peak_rss_mb());
    return 0;
  }
  std::fprintf(stderr, "usage: bench_model train B S STEPS THREADS | load DIR\n");
  return 2;
} catch (const sftgo::Error& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
