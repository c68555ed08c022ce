// HF-layout weights: load from (sharded) safetensors straight into parameters, save through io.
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "sftgo/core/error.h"
#include "sftgo/core/torch_device.h"
#include "sftgo/io/safetensors.h"
#include "sftgo/model/llama.h"
#include "finite.h"
#include "shape_str.h"

namespace sftgo::model {
namespace {

std::optional<c10::ScalarType> torch_dtype(io::DType d) {
  switch (d) {
    case io::DType::kF32: return torch::kFloat;
    case io::DType::kF16: return torch::kHalf;
    case io::DType::kBF16: return torch::kBFloat16;
    default: return std::nullopt;
  }
}

io::DType io_dtype(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat: return io::DType::kF32;
    case torch::kHalf: return io::DType::kF16;
    case torch::kBFloat16: return io::DType::kBF16;
    default: SFTGO_FAIL(ErrorKind::kModel, "cannot save dtype ", c10::toString(t));
  }
}

using detail::shape_str;

// Buffers older HF checkpoints carried (rotary inv_freq) that hold no learned weights.
bool ignorable(const std::string& name) { return name.ends_with(".rotary_emb.inv_freq"); }

}  // namespace

void load_hf_weights(LlamaModelImpl& model, const std::string& checkpoint_path) {
  auto ck = io::SafetensorsCheckpoint::open(checkpoint_path);
  std::map<std::string, torch::Tensor> params;
  std::set<std::string> filled;
  for (auto& [name, p] : model.hf_named_parameters()) {
    // ZeRO-3 keeps no memory for a trained parameter between uses: the optimizer's shards restore it.
    if (p.numel() > 0 && p.storage().nbytes() == 0)
      filled.insert(name);
    else
      params.emplace(name, p);
  }
  torch::NoGradGuard no_grad;
  for (const auto& file : ck.files()) {
    for (const io::TensorView& v : file->tensors()) {
      if (ignorable(v.name)) continue;
      auto it = params.find(v.name);
      if (it == params.end() && filled.count(v.name)) continue;  // sharded (ZeRO-3)
      if (it == params.end() && v.name == "lm_head.weight" && model.config().tie_word_embeddings) {
        // Some tied checkpoints still store the head; it must agree in shape and is not loaded.
        SFTGO_CHECK(v.shape == model.embed_tokens->weight.sizes().vec(), ErrorKind::kModel, v.file,
                    ": tensor 'lm_head.weight' of a tied model has shape ", shape_str(v.shape));
        continue;
      }
      SFTGO_CHECK_HINT(it != params.end(), ErrorKind::kModel, "the checkpoint does not match config.json", v.file,
                       ": unexpected tensor '", v.name, "' (no such parameter in a Llama model with this config)");
      torch::Tensor& p = it->second;
      SFTGO_CHECK(v.shape == p.sizes().vec(), ErrorKind::kModel, v.file, ": tensor '", v.name, "' has shape ",
                  shape_str(v.shape), " but the model expects ", shape_str(p.sizes()));
      auto dt = torch_dtype(v.dtype);
      SFTGO_CHECK(dt.has_value(), ErrorKind::kModel, v.file, ": tensor '", v.name, "' has dtype ",
                  io::dtype_name(v.dtype), "; weights must be F32, F16 or BF16");
      // A view of the mapped bytes (no copy); copy_ converts dtype and moves to the device in one
      // pass, so the only resident copy of the weights is the parameters themselves.
      torch::Tensor src = torch::from_blob(const_cast<std::byte*>(v.data), v.shape, torch::TensorOptions().dtype(*dt));
      p.copy_(src);
      // Checked as loaded (the copy in the model dtype, what is computed with): NaN/Inf weights would
      // make every score, eval and generation meaningless with exit 0.
      SFTGO_CHECK_HINT(std::isfinite(detail::max_abs(p)), ErrorKind::kModel,
                       "the checkpoint is damaged (or overflowed in --dtype); re-export it", v.file, ": tensor '",
                       v.name, "' holds NaN or Inf values");
      file->release_pages(v);
      filled.insert(v.name);
    }
    file->release_pages();  // drop this shard's page-cache pages from our RSS before the next one
  }
  std::vector<std::string> missing;
  for (const auto& [name, p] : params)
    if (!filled.count(name)) missing.push_back(name + " " + shape_str(p.sizes()));
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    SFTGO_FAIL_HINT(ErrorKind::kModel, "the checkpoint is incomplete or for another model", checkpoint_path,
                    ": missing tensors: ", list);
  }
}

LlamaModel load_pretrained(const std::string& dir, ModelOptions options) {
  LlamaConfig config = LlamaConfig::from_file(dir);
  options.init_weights = false;  // every parameter is overwritten by the checkpoint
  LlamaModel model(config, options);
  if (!options.defer_storage) load_hf_weights(*model, dir);  // deferred: weight_source reads them
  return model;
}

WeightSource weight_source(const LlamaModelImpl& model, const ModelOptions& options, const std::string& dir) {
  const c10::ScalarType dtype = model.dtype();
  if (dir.empty()) {
    // The constructor's initialisation, one tensor at a time: normal(0, initializer_range) drawn in fp32
    // from one generator in parameter order (ones for norms), then rounded to the model dtype.
    struct Draw {
      at::Generator gen;
      std::vector<std::pair<std::string, std::vector<int64_t>>> order;  // hf name, shape
      size_t next = 0;
      double std = 0;
    };
    auto d = std::make_shared<Draw>();
    d->gen = at::detail::createCPUGenerator(options.seed);
    d->std = model.config().initializer_range;
    for (const auto& [name, p] : model.hf_named_parameters()) d->order.emplace_back(name, p.sizes().vec());
    return [d, dtype](const std::string& hf_name) {
      torch::NoGradGuard no_grad;
      for (; d->next < d->order.size(); ++d->next) {
        const auto& [name, shape] = d->order[d->next];
        const bool norm = name.ends_with("norm.weight");
        Tensor v = norm ? torch::ones(shape, torch::kFloat)
                        : at::normal(0.0, d->std, shape, d->gen, torch::TensorOptions().dtype(torch::kFloat));
        if (name == hf_name) {
          ++d->next;
          return v.to(dtype);
        }
      }
      SFTGO_FAIL(ErrorKind::kInternal, "weight_source: '", hf_name, "' asked out of parameter order");
    };
  }
  auto ck = std::make_shared<io::SafetensorsCheckpoint>(io::SafetensorsCheckpoint::open(dir));
  std::map<std::string, std::pair<const io::TensorView*, io::SafetensorsFile*>> views;
  for (const auto& file : ck->files())
    for (const io::TensorView& v : file->tensors()) views[v.name] = {&v, file.get()};
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, p] : model.hf_named_parameters()) shapes[name] = p.sizes().vec();
  return [ck, views, shapes, dtype, dir](const std::string& hf_name) {
    auto it = views.find(hf_name);
    SFTGO_CHECK_HINT(it != views.end(), ErrorKind::kModel, "the checkpoint does not match config.json", dir,
                     ": missing parameter ", hf_name);
    const io::TensorView& v = *it->second.first;
    SFTGO_CHECK(v.shape == shapes.at(hf_name), ErrorKind::kModel, v.file, ": tensor '", v.name, "' has shape ",
                shape_str(v.shape), " but the model expects ", shape_str(shapes.at(hf_name)));
    auto dt = torch_dtype(v.dtype);
    SFTGO_CHECK(dt.has_value(), ErrorKind::kModel, v.file, ": tensor '", v.name, "' has dtype ",
                io::dtype_name(v.dtype), "; weights must be F32, F16 or BF16");
    Tensor out = torch::from_blob(const_cast<std::byte*>(v.data), v.shape, torch::TensorOptions().dtype(*dt)).to(dtype, false, true);
    SFTGO_CHECK_HINT(std::isfinite(detail::max_abs(out)), ErrorKind::kModel,
                     "the checkpoint is damaged (or overflowed in --dtype); re-export it", v.file, ": tensor '",
                     v.name, "' holds NaN or Inf values");
    it->second.second->release_pages(v);
    return out;
  };
}

void save_pretrained(const LlamaModelImpl& model, const std::string& dir, const SaveOptions& options) {
  const c10::ScalarType dtype = options.dtype.value_or(model.dtype());
  std::vector<io::TensorSource> sources;
  for (auto& [name, p] : model.hf_named_parameters()) {
    io::TensorSource s;
    s.name = name;
    s.dtype = io_dtype(dtype);
    s.shape = p.sizes().vec();
    torch::Tensor param = p;
    // Staged one tensor at a time: on CPU in the model dtype this is the parameter itself.
    s.bytes = [param, dtype, before = options.before_read, name]() {
      if (before) before(name);
      auto host = std::make_shared<torch::Tensor>(param.detach().to(torch::kCPU, dtype).contiguous());
      return std::shared_ptr<const std::byte>(host, static_cast<const std::byte*>(host->data_ptr()));
    };
    sources.push_back(std::move(s));
  }
  io::ShardedWriteOptions w;
  w.max_shard_bytes = options.max_shard_bytes;
  w.metadata = {{"format", "pt"}};  // transformers checks for it
  std::map<std::string, std::string> files = options.extra_files;
  files["config.json"] = model.config().to_json(dtype_name(dtype));
  io::write_sharded_safetensors(dir, sources, w, files);
}

}  // namespace sftgo::model
