// TorchScript classifier of the llmlingua2 grouping function: batches of windows -> keep probabilities.
#include "sftgo/grouping/llmlingua2_torch.h"

#include <ATen/DeviceAccelerator.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/core/torch_device.h"

#include "builtin.h"

namespace sftgo::grouping {
namespace {

std::atomic<int64_t> g_loads{0};  // TorchScript modules loaded (llmlingua2_classifier_loads)
std::atomic<int64_t> g_alive{0};  // lazy classifiers alive

// "auto" and a bare "cuda" mean this process's current CUDA device: the one the trainer bound this
// rank to (dist::bind_rank_device), not cuda:0 on every rank.
c10::Device classifier_device(const std::string& name) {
  const int current = torch::cuda::is_available() ? at::accelerator::getDeviceIndex() : 0;
  return parse_device(name, "grouping.llmlingua2_device", ErrorKind::kConfig, current);
}

// The last non-empty line of a TorchScript error (the Python-like traceback ends with the cause).
std::string last_line(const std::string& what) {
  size_t end = what.find_last_not_of(" \n\r\t");
  if (end == std::string::npos) return what;
  const size_t begin = what.rfind('\n', end);
  return what.substr(begin == std::string::npos ? 0 : begin + 1,
                     end + 1 - (begin == std::string::npos ? 0 : begin + 1));
}

// Printed IR of every prim::Constant of Device type in `method`'s graph with all calls inlined.
std::vector<std::string> device_constants(const torch::jit::Method& method) {
  auto graph = method.graph()->copy();
  torch::jit::Inline(*graph);
  std::vector<std::string> out;
  std::vector<torch::jit::Block*> blocks{graph->block()};
  while (!blocks.empty()) {
    torch::jit::Block* b = blocks.back();
    blocks.pop_back();
    for (torch::jit::Node* n : b->nodes()) {
      if (n->kind() == c10::prim::Constant && n->output()->type()->kind() == c10::TypeKind::DeviceObjType) {
        std::ostringstream os;
        os << *n;
        std::string line = os.str();
        while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
        out.push_back(line);
      }
      for (torch::jit::Block* sub : n->blocks()) blocks.push_back(sub);
    }
  }
  return out;
}

class TorchKeepClassifier final : public KeepClassifier {
 public:
  TorchKeepClassifier(torch::jit::Module module, torch::Device device, int64_t label, int64_t batch_size,
                      std::string path)
      : module_(std::move(module)), device_(device), label_(label), batch_size_(batch_size), path_(std::move(path)) {}

  std::string device() const override { return device_.str(); }

  // Runs ids [B, T] (int64, padded with <pad>) with mask [B, T] (1 = real) and returns keep
  // probabilities [B, T] float on the CPU; checks the output shape.
  torch::Tensor run(const torch::Tensor& ids, const torch::Tensor& mask) const {
    c10::InferenceMode guard;
    // Run the traced graph as recorded: the profiling executor would re-profile and re-optimize it
    // for every new window length (the first calls of each shape cost several times a plain run).
    torch::jit::GraphOptimizerEnabledGuard no_optimize(false);
    auto out = module_.forward({ids.to(device_), mask.to(device_)});
    SFTGO_CHECK(out.isTensor(), ErrorKind::kConfig, path_, ": forward returned ", out.tagKind(),
                ", expected a logits tensor [B, T, 2]");
    const auto logits = out.toTensor();
    SFTGO_CHECK(logits.dim() == 3 && logits.size(0) == ids.size(0) && logits.size(1) == ids.size(1) &&
                    logits.size(2) == 2 && logits.is_floating_point(),
                ErrorKind::kConfig, path_, ": forward returned ", logits.scalar_type(), " ", logits.sizes(),
                " for input [", ids.size(0), ", ", ids.size(1), "], expected floating logits [", ids.size(0), ", ",
                ids.size(1), ", 2]");
    // llmlingua: F.softmax(logits, dim=-1)[..., 1] in the model's dtype (fp32).
    return torch::softmax(logits.to(torch::kFloat32), -1).select(-1, label_).to(torch::kCPU).contiguous();
  }

  std::vector<std::vector<float>> keep_probs(const std::vector<std::vector<int64_t>>& windows) const override {
    std::vector<std::vector<float>> out(windows.size());
    // Longest first: each batch pads to its own longest window.
    std::vector<size_t> order(windows.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return windows[a].size() > windows[b].size(); });
    for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch_size_)) {
      const size_t stop = std::min(order.size(), start + static_cast<size_t>(batch_size_));
      const auto b = static_cast<int64_t>(stop - start);
      const auto t = static_cast<int64_t>(windows[order[start]].size());
      auto ids = torch::full({b, t}, kXlmrPad, torch::kInt64);
      auto mask = torch::zeros({b, t}, torch::kInt64);
      auto ids_a = ids.accessor<int64_t, 2>();
      auto mask_a = mask.accessor<int64_t, 2>();
      for (int64_t r = 0; r < b; ++r) {
        const auto& w = windows[order[start + static_cast<size_t>(r)]];
        for (size_t i = 0; i < w.size(); ++i) {
          ids_a[r][static_cast<int64_t>(i)] = w[i];
          mask_a[r][static_cast<int64_t>(i)] = 1;
        }
      }
      const auto probs = run(ids, mask);
      const float* p = probs.data_ptr<float>();
      for (int64_t r = 0; r < b; ++r) {
        const auto& w = windows[order[start + static_cast<size_t>(r)]];
        out[order[start + static_cast<size_t>(r)]].assign(p + r * t, p + r * t + static_cast<int64_t>(w.size()));
      }
    }
    return out;
  }

 private:
  mutable torch::jit::Module module_;  // forward is not const in the TorchScript API; it has no state
  torch::Device device_;
  int64_t label_;
  int64_t batch_size_;
  std::string path_;
};

}  // namespace

std::unique_ptr<KeepClassifier> load_llmlingua2_classifier(const Llmlingua2Meta& meta, const std::string& device,
                                                           int64_t batch_size) {
  SFTGO_CHECK(batch_size >= 1, ErrorKind::kConfig, "grouping.llmlingua2_batch_size = ", batch_size, ", expected >= 1");
  const std::string path = (std::filesystem::path(meta.dir) / kLlmlingua2Module).string();
  SFTGO_CHECK_HINT(std::filesystem::is_regular_file(path), ErrorKind::kIo,
                   "export one with scripts/export_llmlingua2.py", "LLMLingua-2 TorchScript module ", path,
                   " does not exist");
  const auto dev = classifier_device(device);
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, dev);
  } catch (const c10::Error& e) {
    SFTGO_FAIL_HINT(ErrorKind::kConfig, "export it with scripts/export_llmlingua2.py", path,
                    ": not a TorchScript module (", e.what_without_backtrace(), ")");
  }
  module.eval();
  // Signature: forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor.
  const auto method = module.find_method("forward");
  SFTGO_CHECK(method.has_value(), ErrorKind::kConfig, path, ": the module has no forward method");
  if (!dev.is_cpu()) {
    // Exports by older versions of the script traced on the CPU and kept that device in the graph;
    // map_location moves only parameters, so they fail on a GPU with a device-mismatch error.
    const auto consts = device_constants(*method);
    SFTGO_CHECK_HINT(consts.empty(), ErrorKind::kConfig,
                     "re-export it with scripts/export_llmlingua2.py (it now writes device-neutral graphs), or set "
                     "grouping.llmlingua2_device: cpu",
                     path, ": the TorchScript graph has ", consts.size(), " fixed device constant(s) (", consts.front(),
                     ") and cannot run on ", dev.str());
  }
  const auto& schema = method->function().getSchema();
  const auto& args = schema.arguments();
  std::string got;
  for (size_t i = 1; i < args.size(); ++i) got += (i > 1 ? ", " : "") + args[i].name() + ": " + args[i].type()->str();
  const bool ok = args.size() == 3 && args[1].name() == "input_ids" && args[2].name() == "attention_mask" &&
                  args[1].type()->kind() == c10::TypeKind::TensorType &&
                  args[2].type()->kind() == c10::TypeKind::TensorType && schema.returns().size() == 1 &&
                  schema.returns()[0].type()->kind() == c10::TypeKind::TensorType;
  SFTGO_CHECK_HINT(ok, ErrorKind::kConfig, "export it with scripts/export_llmlingua2.py", path, ": forward takes (",
                   got, ") -> ", schema.returns().empty() ? "()" : schema.returns()[0].type()->str(),
                   ", expected (input_ids: Tensor, attention_mask: Tensor) -> Tensor (logits [B, T, 2])");
  auto clf = std::make_unique<TorchKeepClassifier>(std::move(module), dev, meta.label_index, batch_size, path);
  // Probe: two windows of different lengths, using the largest piece id we can produce, so that a
  // wrong output shape or a too-small embedding fails here and not in the middle of a dataset.
  const int64_t top = meta.sentencepiece_pieces - 1 + kXlmrPieceOffset;
  try {
    auto ids = torch::tensor({kXlmrBos, top, kXlmrUnk, kXlmrEos, kXlmrBos, top, kXlmrEos, kXlmrPad}, torch::kInt64)
                   .view({2, 4});
    auto mask = torch::tensor({1, 1, 1, 1, 1, 1, 1, 0}, torch::kInt64).view({2, 4});
    const auto p = clf->run(ids, mask);
    SFTGO_CHECK(torch::isfinite(p).all().item<bool>(), ErrorKind::kConfig, path,
                ": the probe batch gave non-finite probabilities");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    SFTGO_FAIL_HINT(ErrorKind::kConfig, "the module and llmlingua2.json must come from the same export", path,
                    ": forward failed on a probe batch [2, 4] with ids up to ", top, " (", last_line(e.what()), ")");
  }
  g_loads.fetch_add(1);
  return clf;
}

namespace {

// The classifier behind grouping function objects: the device and the file are checked when the
// function is made (so configuration errors still come at set-up), but the TorchScript module (XLM-R
// large: 2.2 GB of weights) is loaded only by the first keep_probs, i.e. only when the groups are not
// in the cache, and freed (with the CUDA allocator's cached blocks) when the function is destroyed.
class LazyKeepClassifier final : public KeepClassifier {
 public:
  LazyKeepClassifier(Llmlingua2Meta meta, const std::string& device, int64_t batch_size)
      : meta_(std::move(meta)), device_(classifier_device(device)), batch_size_(batch_size) {
    SFTGO_CHECK(batch_size >= 1, ErrorKind::kConfig, "grouping.llmlingua2_batch_size = ", batch_size,
                ", expected >= 1");
    const auto path = std::filesystem::path(meta_.dir) / kLlmlingua2Module;
    SFTGO_CHECK_HINT(std::filesystem::is_regular_file(path), ErrorKind::kIo,
                     "export one with scripts/export_llmlingua2.py", "LLMLingua-2 TorchScript module ", path.string(),
                     " does not exist");
    g_alive.fetch_add(1);
  }
  ~LazyKeepClassifier() override {
    g_alive.fetch_sub(1);
    if (!inner_) return;
    inner_.reset();
    if (device_.is_cuda()) at::accelerator::emptyCache();  // hand the weights' blocks back to the driver
    log_info("grouping: llmlingua2 classifier released from {}", device_.str());
  }

  std::string device() const override { return device_.str(); }

  std::vector<std::vector<float>> keep_probs(const std::vector<std::vector<int64_t>>& windows) const override {
    std::call_once(loaded_, [&] {
      const auto start = std::chrono::steady_clock::now();
      inner_ = load_llmlingua2_classifier(meta_, device_.str(), batch_size_);
      log_info("grouping: llmlingua2 classifier loaded on {} ({:.2f} s)", device_.str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    });
    return inner_->keep_probs(windows);
  }

 private:
  Llmlingua2Meta meta_;
  torch::Device device_;
  int64_t batch_size_;
  mutable std::once_flag loaded_;
  mutable std::unique_ptr<KeepClassifier> inner_;
};

}  // namespace

int64_t llmlingua2_classifier_loads() { return g_loads.load(); }
int64_t llmlingua2_lazy_classifiers_alive() { return g_alive.load(); }

KeepClassifierMaker lazy_llmlingua2_classifier(const Llmlingua2Options& opts) {
  return [device = opts.device, batch = opts.batch_size](const Llmlingua2Meta& meta) {
    return std::make_unique<LazyKeepClassifier>(meta, device, batch);
  };
}

// The text side (options, scorer, function) is llmlingua2.cpp; this adds the TorchScript classifier.
GroupingFunctionSpec detail::llmlingua2_function() {
  return {"llmlingua2", llmlingua2_option_specs(), [](const GroupingOptions& opts, const Tokenizer* tok) {
            return make_llmlingua2_function(opts, tok, lazy_llmlingua2_classifier(llmlingua2_options(opts.params)));
          }};
}

}  // namespace sftgo::grouping
