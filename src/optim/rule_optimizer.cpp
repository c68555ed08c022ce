// RuleOptimizer: an UpdateRule over whole parameters, saved in LibTorch's optimizer archive layout.
#include <torch/serialize.h>
#include <torch/torch.h>

#include <map>

#include "sftgo/core/error.h"
#include "sftgo/optim/optim.h"

namespace sftgo::optim {
namespace {

std::unique_ptr<RuleGroupOptions> group_options(double lr, double weight_decay) {
  auto o = std::make_unique<RuleGroupOptions>();
  o->lr = lr;
  o->weight_decay = weight_decay;
  return o;
}

// LibTorch's names: a tensor's key is its TensorImpl address at save time.
std::string impl_key(const torch::Tensor& t) {
  return std::to_string(reinterpret_cast<size_t>(t.unsafeGetTensorImpl()));
}

// One parameter's saved state archive -> RuleParamState (the rule's tensors by name, on `device`).
RuleParamState read_param_state(torch::serialize::InputArchive& a, const UpdateRule& rule, const std::string& key) {
  RuleParamState st;
  c10::IValue step;
  SFTGO_CHECK(a.try_read("step", step) && step.isInt(), ErrorKind::kFormat, "optimizer state ", key,
              " has no integer 'step'");
  st.step = step.toInt();
  for (const auto& name : rule.state_names()) {
    c10::IValue t;
    SFTGO_CHECK(a.try_read(name, t) && t.isTensor(), ErrorKind::kFormat, "optimizer state ", key, " has no '", name,
                "' tensor, which update rule '", rule.name(), "' keeps");
    st.tensors.push_back(t.toTensor());
  }
  return st;
}

}  // namespace

RuleOptimizer::RuleOptimizer(const NamedParameters& params, const RuleOptions& o)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, group_options(o.lr, o.weight_decay)),
      rule_(make_update_rule(o)) {
  std::vector<torch::Tensor> with_decay, without_decay;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    SFTGO_CHECK(p.is_floating_point(), ErrorKind::kInternal, "parameter ", name, " is not floating point");
    (decays(name, p) ? with_decay : without_decay).push_back(p);
  }
  add_param_group({with_decay, group_options(o.lr, o.weight_decay)});
  add_param_group({without_decay, group_options(o.lr, 0.0)});
}

const RuleParamState* RuleOptimizer::state_of(const torch::Tensor& param) const {
  auto it = state_.find(param.unsafeGetTensorImpl());
  return it == state_.end() ? nullptr : static_cast<const RuleParamState*>(it->second.get());
}

torch::Tensor RuleOptimizer::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  const size_t n_state = rule_->state_names().size();
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const RuleGroupOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Tensor& grad = p.grad();
      SFTGO_CHECK(!grad.is_sparse(), ErrorKind::kInternal, "update rule ", rule_->name(), ": sparse gradients");
      rule_->decay(p, options.lr, options.weight_decay);
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) {
        auto st = std::make_unique<RuleParamState>();
        for (size_t i = 0; i < n_state; ++i) st->tensors.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state_.emplace(p.unsafeGetTensorImpl(), std::move(st)).first;
      }
      auto& st = static_cast<RuleParamState&>(*it->second);
      st.step += 1;
      if (rule_->needs_whole_matrices()) {
        rule_->apply(p, grad, st.tensors, options.lr, st.step);
        continue;
      }
      // Element-wise: slice by slice (the results do not depend on the slicing), all tensors alike.
      bool same = p.is_contiguous() && grad.is_contiguous();
      for (const auto& s : st.tensors) same = same && s.is_contiguous();
      const auto ps = element_slices(p, same), gs = element_slices(grad, same);
      std::vector<std::vector<torch::Tensor>> ss;
      for (const auto& s : st.tensors) ss.push_back(element_slices(s, same));
      for (const auto& s : ss)
        SFTGO_CHECK(s.size() == ps.size(), ErrorKind::kInternal, "update rule: parameter and state layouts differ");
      SFTGO_CHECK(gs.size() == ps.size(), ErrorKind::kInternal, "update rule: parameter and gradient layouts differ");
      std::vector<torch::Tensor> slice_state(n_state);
      for (size_t i = 0; i < ps.size(); ++i) {
        for (size_t k = 0; k < n_state; ++k) slice_state[k] = ss[k][i];
        rule_->apply(ps[i], gs[i], slice_state, options.lr, st.step);
      }
    }
  }
  return loss;
}

// LibTorch's layout (torch/optim/serialize.h), so torch::optim::AdamW reads an AdamW rule's file and
// the other way round: tensors and scalars are IValue attributes, sizes are tensors.
void RuleOptimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("pytorch_version", c10::IValue("1.5.0"));
  archive.write(kUpdateRuleKey, c10::IValue(rule_->name()));
  const auto names = rule_->state_names();
  torch::serialize::OutputArchive state_archive(archive.compilation_unit());
  for (const auto& [impl, base] : state_) {
    const auto& st = static_cast<const RuleParamState&>(*base);
    torch::serialize::OutputArchive one(state_archive.compilation_unit());
    one.write("step", c10::IValue(st.step));
    for (size_t k = 0; k < names.size(); ++k) one.write(names[k], c10::IValue(st.tensors[k]));
    state_archive.write(std::to_string(reinterpret_cast<size_t>(impl)), one);
  }
  archive.write("state", state_archive);

  torch::serialize::OutputArchive groups_archive(archive.compilation_unit());
  groups_archive.write("param_groups/size", torch::tensor(static_cast<int64_t>(param_groups_.size())));
  for (size_t i = 0; i < param_groups_.size(); ++i) {
    const auto& params = param_groups_[i].params();
    torch::serialize::OutputArchive group(groups_archive.compilation_unit());
    group.write("params/size", torch::tensor(static_cast<int64_t>(params.size())));
    for (size_t j = 0; j < params.size(); ++j) group.write("params/" + std::to_string(j), c10::IValue(impl_key(params[j])));
    const auto& o = static_cast<const RuleGroupOptions&>(param_groups_[i].options());
    torch::serialize::OutputArchive options(group.compilation_unit());
    for (const auto& [key, value] : rule_->saved_options(o.lr, o.weight_decay)) options.write(key, value);
    group.write("options", options);
    groups_archive.write("param_groups/" + std::to_string(i), group);
  }
  archive.write("param_groups", groups_archive);
}

void RuleOptimizer::load(torch::serialize::InputArchive& archive) {
  c10::IValue version, saved_rule;
  archive.read("pytorch_version", version);
  SFTGO_CHECK(version.isString() && version.toStringRef() == "1.5.0", ErrorKind::kFormat,
              "not a LibTorch optimizer archive (pytorch_version 1.5.0 expected)");
  // Files without a rule name were written by torch::optim::AdamW (sftgo before the update rules).
  const std::string rule = archive.try_read(kUpdateRuleKey, saved_rule) ? saved_rule.toStringRef() : "adamw";
  SFTGO_CHECK_HINT(rule == rule_->name(), ErrorKind::kConfig, "resume with the optim.name the run was saved with",
                   "the optimizer state was saved by update rule '", rule, "', but optim.name is '", rule_->name(),
                   "'");
  torch::serialize::InputArchive state_archive;
  archive.read("state", state_archive);
  std::map<std::string, RuleParamState> saved;
  for (const auto& key : state_archive.keys()) {
    torch::serialize::InputArchive one;
    state_archive.read(key, one);
    saved.emplace(key, read_param_state(one, *rule_, key));
  }

  torch::serialize::InputArchive groups_archive;
  archive.read("param_groups", groups_archive);
  torch::Tensor n_groups;
  groups_archive.read("param_groups/size", n_groups);
  SFTGO_CHECK(n_groups.item<int64_t>() == static_cast<int64_t>(param_groups_.size()), ErrorKind::kFormat,
              "the optimizer state has ", n_groups.item<int64_t>(), " parameter groups, this model ",
              param_groups_.size());
  for (size_t i = 0; i < param_groups_.size(); ++i) {
    torch::serialize::InputArchive group;
    groups_archive.read("param_groups/" + std::to_string(i), group);
    torch::Tensor size;
    group.read("params/size", size);
    const auto& params = param_groups_[i].params();
    SFTGO_CHECK(size.item<int64_t>() == static_cast<int64_t>(params.size()), ErrorKind::kFormat,
                "the optimizer state's parameter group ", i, " has ", size.item<int64_t>(), " parameters, this model ",
                params.size());
    for (size_t j = 0; j < params.size(); ++j) {
      c10::IValue key;
      group.read("params/" + std::to_string(j), key);
      auto it = saved.find(key.toStringRef());
      if (it == saved.end()) continue;  // not updated yet when saved
      RuleParamState& st = it->second;
      for (auto& t : st.tensors) {
        SFTGO_CHECK(t.sizes() == params[j].sizes(), ErrorKind::kFormat, "the optimizer state of parameter ", j,
                    " in group ", i, " has shape ", t.sizes(), ", the parameter ", params[j].sizes());
        if (t.device() != params[j].device()) t = t.to(params[j].device());
      }
      state_[params[j].unsafeGetTensorImpl()] = std::make_unique<RuleParamState>(std::move(st));
    }
  }
}

}  // namespace sftgo::optim
