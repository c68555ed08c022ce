// TorchScript classifier of the llmlingua2 grouping function: batches of windows -> keep probabilities.
#include "sftgo/grouping/llmlingua2_torch.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/torch_device.h"

// Referenced by `-Wl,--undefined` in src/grouping/CMakeLists.txt so that every binary linking
// sftgo_grouping pulls this object (and its registration below) out of the static library.
extern "C" int sftgo_llmlingua2_torch_anchor = 0;

namespace sftgo::grouping {
namespace {

// The last non-empty line of a TorchScript error (the Python-like traceback ends with the cause).
std::string last_line(const std::string& what) {
  size_t end = what.find_last_not_of(" \n\r\t");
  if (end == std::string::npos) return what;
  const size_t begin = what.rfind('\n', end);
  return what.substr(begin == std::string::npos ? 0 : begin + 1, end + 1 - (begin == std::string::npos ? 0 : begin + 1));
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
  const auto dev = parse_device(device, "grouping.llmlingua2_device");
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
  const auto& schema = method->function().getSchema();
  const auto& args = schema.arguments();
  std::string got;
  for (size_t i = 1; i < args.size(); ++i) got += (i > 1 ? ", " : "") + args[i].name() + ": " + args[i].type()->str();
  const bool ok = args.size() == 3 && args[1].name() == "input_ids" && args[2].name() == "attention_mask" &&
                  args[1].type()->kind() == c10::TypeKind::TensorType &&
                  args[2].type()->kind() == c10::TypeKind::TensorType && schema.returns().size() == 1 &&
                  schema.returns()[0].type()->kind() == c10::TypeKind::TensorType;
  SFTGO_CHECK_HINT(ok, ErrorKind::kConfig, "export it with scripts/export_llmlingua2.py", path,
                   ": forward takes (", got, ") -> ", schema.returns().empty() ? "()" : schema.returns()[0].type()->str(),
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
  return clf;
}

void register_llmlingua2_classifier() {
  set_llmlingua2_classifier_loader([](const Llmlingua2Meta& meta, const GroupingOptions& opts) {
    return load_llmlingua2_classifier(meta, opts.llmlingua2_device, opts.llmlingua2_batch_size);
  });
}

namespace {
const bool kRegistered = [] {
  register_llmlingua2_classifier();
  return true;
}();
}  // namespace

}  // namespace sftgo::grouping
