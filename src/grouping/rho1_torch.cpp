// Rho-1: the tensor front end of select_rho1 (the ranking runs on the CPU: B*S is small next to the
// forward pass) and the `rho1` dynamic grouping function.
#include "sftgo/grouping/rho1_torch.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <optional>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/log.h"
#include "sftgo/core/timer.h"
#include "sftgo/grouping/cache.h"
#include "sftgo/grouping/dynamic.h"
#include "sftgo/grouping/shard.h"
#include "sftgo/model/config.h"
#include "sftgo/model/llama.h"
#include "sftgo/model/score.h"

#include "builtin.h"

namespace sftgo::grouping {

torch::Tensor select_rho1(const torch::Tensor& current_loss, const torch::Tensor& ref_loss,
                          const torch::Tensor& trained, double k_percent, Selection selection) {
  SFTGO_CHECK(current_loss.dim() == 2, ErrorKind::kInternal, "select_rho1: current_loss must be [B, S], got ",
              current_loss.sizes());
  SFTGO_CHECK(ref_loss.sizes() == current_loss.sizes() && trained.sizes() == current_loss.sizes(), ErrorKind::kInternal,
              "select_rho1: shapes differ: current ", current_loss.sizes(), ", reference ", ref_loss.sizes(), ", mask ",
              trained.sizes());
  const int64_t b = current_loss.size(0), s = current_loss.size(1);
  auto cur = current_loss.detach().to(torch::kCPU, torch::kFloat32).contiguous();    // [B, S]
  auto ref = ref_loss.detach().to(torch::kCPU, torch::kFloat32).contiguous();        // [B, S]
  auto msk = trained.detach().to(torch::kCPU).ne(0).to(torch::kUInt8).contiguous();  // [B, S]
  const auto n = static_cast<size_t>(b * s);
  auto sel =
      select_rho1(std::span<const float>(cur.data_ptr<float>(), n), std::span<const float>(ref.data_ptr<float>(), n),
                  std::span<const uint8_t>(msk.data_ptr<uint8_t>(), n), b, s, k_percent, selection);
  auto out = torch::from_blob(sel.data(), {b, s}, torch::kUInt8).clone();  // [B, S]
  return out.to(current_loss.device());
}

}  // namespace sftgo::grouping

// ---- The `rho1` grouping function --------------------------------------------------------------
namespace sftgo::grouping {
namespace {

// Identity of a checkpoint's weights for the reference-loss cache: its path, config.json and the name,
// size and modification time of every safetensors file (re-training into the same directory changes it).
std::string checkpoint_identity(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string id = fs::weakly_canonical(dir).string();
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(fs::path(dir))) {
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json"))
      files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  for (const auto& name : files) {
    const fs::path p = fs::path(dir) / name;
    const auto mtime = fs::last_write_time(p).time_since_epoch().count();
    id += sftgo::format(";{}:{}:{}", name, fs::file_size(p), mtime);
  }
  return id;
}

// grouping.rho1_reference_model value that names a LoRA run's own frozen base model as the reference.
constexpr const char* kBaseReference = "base";

// Padded tokens per reference forward (model::score_logprobs' default).
constexpr int64_t kScoreBatchTokens = 8192;

// The reference forwards as model::score_logprobs forms them: longest first, up to kScoreBatchTokens
// padded tokens each. They are the units of the sharded scoring (shard.h), and each is scored by one
// call, so an example gets the same bits whichever rank scores it and however many ranks there are.
ShardUnits reference_batches(const std::vector<data::TokenizedExample>& examples) {
  ShardUnits u;
  u.order.resize(examples.size());
  std::iota(u.order.begin(), u.order.end(), size_t{0});
  std::stable_sort(u.order.begin(), u.order.end(),
                   [&](size_t a, size_t b) { return examples[a].ids.size() > examples[b].ids.size(); });
  for (size_t i = 0; i < u.order.size();) {
    const size_t len = std::max<size_t>(1, examples[u.order[i]].ids.size());
    const size_t batch = std::max<size_t>(1, static_cast<size_t>(kScoreBatchTokens) / len);
    const size_t end = std::min(u.order.size(), i + batch);
    u.ends.push_back(end);
    u.costs.push_back((end - i) * len);
    i = end;
  }
  return u;
}

// Rho-1 (Lin et al. 2024): the important tokens are the top-k% by excess loss, the training model's
// current loss minus a frozen reference model's. The reference scores every example once (prepare);
// the current loss is the training forward's own, handed over by the fused loss (select).
class Rho1Function final : public DynamicGroupingFunction {
 public:
  explicit Rho1Function(const GroupingOptions& opts)
      : k_(opts.top_k_percent),
        selection_(parse_selection(opts.selection)),
        reference_(opts.params.get<std::string>("rho1_reference_model")),
        separate_forward_(opts.params.get<bool>("rho1_extra_forward")) {
    SFTGO_CHECK_HINT(!reference_.empty(), ErrorKind::kConfig,
                     "set grouping.rho1_reference_model to a Hugging Face checkpoint directory",
                     "grouping.function rho1 needs a reference model");
    (void)num_important(0, k_);  // validates k
  }

  std::string name() const override { return "rho1"; }
  Requirements requirements() const override { return {.reference_model = true, .current_model_loss = true}; }
  std::string params() const override { return ""; }
  std::vector<std::string> batch_scores() const override { return {kRefLossKey}; }
  bool separate_forward() const override { return separate_forward_; }

  // The reference model's per-token loss travels with each example as scores[kRefLossKey] (entry t
  // is the loss of predicting token t). Cached on disk keyed on the examples, the reference
  // checkpoint and the dtype, so further seeds and restarts skip the scoring.
  void prepare(std::vector<data::TokenizedExample>& examples, const PrepareContext& ctx) override {
    Timer t;
    const bool base = reference_ == kBaseReference;
    SFTGO_CHECK_HINT(!base || ctx.base_model_logprobs, ErrorKind::kConfig,
                     "set lora.enabled: true, or name a checkpoint directory",
                     "grouping.rho1_reference_model: base uses the frozen base model of a LoRA run as the reference");
    if (!base) {
      const model::LlamaConfig ref_cfg = model::LlamaConfig::from_file(reference_);
      SFTGO_CHECK(ref_cfg.vocab_size == ctx.vocab_size, ErrorKind::kConfig, "the Rho-1 reference model ", reference_,
                  " has a vocabulary of ", ref_cfg.vocab_size, " but the trained model's is ", ctx.vocab_size);
    }
    std::string cache_path;
    uint64_t key = 0;
    if (!ctx.cache_dir.empty()) {
      const std::string fingerprint = sftgo::format("{:x}", examples_fingerprint(examples));
      const std::string params =
          sftgo::format("dtype={};{}", c10::toString(ctx.dtype),
                        base ? "lora-base:" + ctx.base_model_identity : checkpoint_identity(reference_));
      key = grouping_cache_key(fingerprint, "rho1-ref", params, 0.0);
      cache_path = grouping_cache_path(ctx.cache_dir, "rho1-ref", key);
    }
    // Data parallel with a cache: every rank scores its share, the shares are merged (shard.h).
    GroupingOutput out = compute_sharded(
        examples, cache_path, key, ctx.shard, reference_batches(examples),
        [&](const ShardUnits& u, ShareRange r) { return reference_losses(examples, u, r, ctx); },
        "Rho-1 reference losses");
    for (size_t i = 0; i < examples.size(); ++i) examples[i].scores[kRefLossKey] = std::move(out.scores[i]);
    if (out.from_cache)
      log_info("rho1: reference losses of {} for the {} loaded from {} ({:.2f}s)", reference_, ctx.what, cache_path,
               t.seconds());
    else
      log_info("rho1: reference model {} scored {} examples of the {} in {:.1f}s{}", reference_, examples.size(),
               ctx.what, t.seconds(), cache_path.empty() ? "" : sftgo::format(" (cached in {})", cache_path));
  }

  int64_t important_count(const MicroBatchView& b) const override {
    if (selection_ == Selection::kBatch) return num_important(b.select.numel(), k_);
    const at::Tensor per_row = b.trained.sum(1).cpu();  // [B] trained tokens per sequence
    int64_t n = 0;
    for (int64_t r = 0; r < b.rows; ++r) n += num_important(per_row[r].item<int64_t>(), k_);
    return n;
  }

  at::Tensor select(const MicroBatchView& b, const at::Tensor& token_loss) const override {
    const auto ref = b.scores.find(kRefLossKey);
    SFTGO_CHECK(ref != b.scores.end(), ErrorKind::kInternal, "rho1: micro-batch without reference losses");
    // [T] -> [B, S-1] with zeros at untrained positions (never selected).
    at::Tensor dense = at::zeros({b.rows * b.positions}, token_loss.options()).index_put_({b.select}, token_loss);
    at::Tensor mask = select_rho1(dense.view({b.rows, b.positions}), ref->second, b.trained, k_, selection_);
    return mask.reshape({-1}).to(token_loss.device()).index_select(0, b.select);  // [T] uint8
  }

 private:
  // Entry t of an example's scores is the reference loss of predicting token t (0 at t = 0); its
  // groups are unused (0). Rows in units.order; one scoring call per unit (one forward batch). The
  // reference model is loaded only here, so a cache hit never loads it.
  GroupingOutput reference_losses(const std::vector<data::TokenizedExample>& examples, const ShardUnits& units,
                                  ShareRange share, const PrepareContext& ctx) const {
    std::optional<model::LlamaModel> ref;  // released at the end of the call
    if (reference_ != kBaseReference) {
      model::ModelOptions mo;
      mo.dtype = ctx.dtype;
      mo.device = ctx.device;
      mo.init_weights = false;
      ref = model::load_pretrained(reference_, mo);
    }
    GroupingOutput out;
    for (size_t u = share.begin; u < share.end; ++u) {
      std::vector<std::vector<int64_t>> seqs;
      for (size_t k = units.first(u); k < units.ends[u]; ++k)
        seqs.emplace_back(examples[units.order[k]].ids.begin(), examples[units.order[k]].ids.end());
      const auto logprobs = ref ? model::score_logprobs(**ref, seqs, kScoreBatchTokens) : ctx.base_model_logprobs(seqs);
      for (size_t k = 0; k < seqs.size(); ++k) {
        std::vector<float> loss(seqs[k].size(), 0.0f);
        for (size_t t = 1; t < seqs[k].size(); ++t) loss[t] = static_cast<float>(-logprobs[k][t - 1]);
        out.groups.emplace_back(seqs[k].size(), kGroupOther);
        out.scores.push_back(std::move(loss));
      }
    }
    return out;
  }

  double k_;
  Selection selection_;
  std::string reference_;
  bool separate_forward_;
};

}  // namespace

GroupingFunctionSpec detail::rho1_function() {
  std::vector<OptionSpec> options = {
      {"rho1_reference_model", "",
       "Rho-1: frozen reference model checkpoint directory, or `base` for a LoRA run's own frozen base model "
       "(adapters off: no second model in memory)"},
      {"rho1_extra_forward", false,
       "Rho-1: take the current model's losses from a separate no-grad forward before each step (the pre-#6 way, "
       "one extra forward per micro-batch) instead of from the training forward itself"},
  };
  return {"rho1", std::move(options),
          [](const GroupingOptions& opts, const Tokenizer*) { return std::make_unique<Rho1Function>(opts); }};
}

}  // namespace sftgo::grouping
