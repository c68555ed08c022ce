// The precision policies of train.precision and their registry (include/sftgo/train/precision.h).
#include "sftgo/train/precision.h"

#include <algorithm>

#include "sftgo/core/error.h"
#include "sftgo/core/registry.h"
#include "sftgo/core/torch_device.h"

namespace sftgo::train {

PrecisionPolicy::~PrecisionPolicy() = default;

std::unique_ptr<Updater> PrecisionPolicy::make_updater(const UpdaterSetup& s) const {
  const UpdaterKind kind = s.zero == 3   ? UpdaterKind::kZero3
                          : s.zero == 2 ? UpdaterKind::kZero2
                          : s.zero == 1 ? UpdaterKind::kZero1
                                        : UpdaterKind::kPlain;
  return train::make_updater(kind, s.comm, s.params, s.options);
}

namespace {

// fp32 weights, compute and AdamW state (the config refuses model.dtype bfloat16 with it).
class Fp32Policy final : public PrecisionPolicy {
 public:
  std::string name() const override { return "fp32"; }
};

// bf16 weights and compute; the update keeps fp32 master weights and AdamW state for every trained
// parameter held in bf16. LoRA adapters are fp32 already, so a LoRA run needs no masters.
class Bf16MastersPolicy final : public PrecisionPolicy {
 public:
  std::string name() const override { return "bf16"; }
  std::string summary() const override { return "bf16 compute, fp32 master weights of bf16 trained parameters"; }
  c10::ScalarType weight_dtype(c10::ScalarType) const override { return c10::kBFloat16; }
  std::unique_ptr<Updater> make_updater(const UpdaterSetup& s) const override {
    const bool below_fp32 = std::any_of(s.params.begin(), s.params.end(),
                                        [](const auto& p) { return p.second.scalar_type() != c10::kFloat; });
    if (s.zero > 0 || !below_fp32) return PrecisionPolicy::make_updater(s);  // ZeRO keeps its own fp32 shard
    return train::make_updater(UpdaterKind::kFp32Masters, s.comm, s.params, s.options);
  }
};

// fp32 weights and AdamW state; the forward runs inside a bf16 autocast region and the fused loss
// takes bf16 inputs outside it, as torch.amp.custom_fwd(cast_inputs=torch.bfloat16) would run it: its
// fp32 softmax and grad_h accumulation over bf16 GEMMs stay its own, and its bf16 logit blocks equal
// what autocast makes of HF's lm_head. The head cast's backward hands the fp32 parameter an fp32 gradient.
class Bf16AutocastPolicy final : public PrecisionPolicy {
 public:
  std::string name() const override { return "bf16_autocast"; }
  std::string summary() const override { return "bf16 autocast"; }
  c10::ScalarType weight_dtype(c10::ScalarType configured) const override {
    SFTGO_CHECK_HINT(configured == c10::kFloat, ErrorKind::kConfig,
                     "set model.dtype: float32, or use train.precision: bf16 for bf16 weights",
                     "train.precision bf16_autocast keeps fp32 weights (autocast casts them per op) but model.dtype is ",
                     dtype_name(configured));
    return configured;
  }
  // One region per forward: leaving it drops the cached bf16 weight casts (the weights change at the
  // next optimizer step).
  std::unique_ptr<model::AutocastGuard> forward_region(c10::DeviceType device) const override {
    return std::make_unique<model::AutocastGuard>(device, at::kBFloat16);
  }
  at::Tensor loss_hidden(const at::Tensor& hidden) const override { return hidden.to(at::kBFloat16); }
  at::Tensor loss_head(const at::Tensor& head) const override { return head.to(at::kBFloat16); }
};

NamedRegistry<PrecisionFactory>& precision_registry() {
  // The built-ins, one line per policy, filled on first use (no static-initialisation order to lose one).
  static auto* r = [] {
    auto* reg = new NamedRegistry<PrecisionFactory>({"a precision policy needs a name and a factory",
                                                     "precision policy", "unknown train.precision",
                                                     "use one of the registered names"});
    reg->add("fp32", [] { return std::make_unique<Fp32Policy>(); });
    reg->add("bf16", [] { return std::make_unique<Bf16MastersPolicy>(); });
    reg->add("bf16_autocast", [] { return std::make_unique<Bf16AutocastPolicy>(); });
    return reg;
  }();
  return *r;
}

}  // namespace

void register_precision_policy(const std::string& name, PrecisionFactory factory) {
  precision_registry().add(name, std::move(factory));
}

std::vector<std::string> precision_policy_names() { return precision_registry().names(); }

std::unique_ptr<PrecisionPolicy> make_precision_policy(const std::string& name) {
  return precision_registry().get(name)();
}

}  // namespace sftgo::train
