// loss_tool IN_DIR OUT_DIR: runs fused_group_loss (or the reference, "impl": "reference") on inputs
// written by tests/python/test_loss_reference.py and writes the loss, metrics and gradients back.
//   IN_DIR/meta.json  {"T", "H", "V", "dtype": "float32"|"bfloat16", "objective", "lambda",
//                      "chunk_vocab", "impl"}
//   IN_DIR/hidden.f32 [T, H], weight.f32 [V, H] (raw little-endian fp32; bf16 runs convert them),
//          labels.i64 [T], groups.u8 [T]
//   OUT_DIR/result.json, grad_hidden.f32 [T, H], grad_weight.f32 [V, H] (fp32)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"
#include "reference_loss.h"
#include "sftgo/loss/group_loss.h"

namespace fs = std::filesystem;

namespace {

at::Tensor read_raw(const fs::path& path, at::ScalarType type, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  std::ifstream in(path, std::ios::binary);
  SFTGO_CHECK(in.good(), sftgo::ErrorKind::kIo, "cannot open ", path.string());
  const auto bytes = static_cast<std::streamsize>(t.numel() * t.element_size());
  in.read(static_cast<char*>(t.data_ptr()), bytes);
  SFTGO_CHECK(in.gcount() == bytes, sftgo::ErrorKind::kIo, path.string(), ": expected ", bytes, " bytes");
  return t;
}

void write_raw(const fs::path& path, const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.const_data_ptr()), static_cast<std::streamsize>(c.numel() * 4));
  SFTGO_CHECK(out.good(), sftgo::ErrorKind::kIo, "cannot write ", path.string());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: loss_tool IN_DIR OUT_DIR\n";
    return 2;
  }
  try {
    const fs::path in_dir = argv[1];
    const fs::path out_dir = argv[2];
    std::ifstream meta_in(in_dir / "meta.json");
    const nlohmann::json meta = nlohmann::json::parse(meta_in);
    const int64_t t = meta.at("T"), h = meta.at("H"), v = meta.at("V");
    const auto dtype = meta.value("dtype", "float32") == "bfloat16" ? at::kBFloat16 : at::kFloat;
    sftgo::loss::FusedLossOptions options;
    options.objective = sftgo::loss::parse_objective(meta.value("objective", "sftgo"));
    options.lambda = meta.value("lambda", 0.5);
    options.chunk_vocab = meta.value("chunk_vocab", 0);
    const bool reference = meta.value("impl", "fused") == "reference";

    at::Tensor hidden = read_raw(in_dir / "hidden.f32", at::kFloat, {t, h}).to(dtype).requires_grad_(true);
    at::Tensor weight = read_raw(in_dir / "weight.f32", at::kFloat, {v, h}).to(dtype).requires_grad_(true);
    const at::Tensor labels = read_raw(in_dir / "labels.i64", at::kLong, {t});
    const at::Tensor groups = read_raw(in_dir / "groups.u8", at::kByte, {t});

    sftgo::loss::LossInfo info;
    at::Tensor loss = reference ? sftgo::loss::reference_group_loss(hidden, weight, labels, groups, options, &info)
                                : sftgo::loss::fused_group_loss(hidden, weight, labels, groups, options, &info);
    loss.backward();

    fs::create_directories(out_dir);
    const auto& m = info.metrics;
    const nlohmann::json result = {{"loss", loss.item<double>()},
                                   {"loss_ce", m.loss_ce},
                                   {"loss_imp", m.loss_imp},
                                   {"loss_unimp", m.loss_unimp},
                                   {"worst", m.worst},
                                   {"count_imp", m.count_imp},
                                   {"count_unimp", m.count_unimp},
                                   {"chunk_vocab", info.chunk_vocab}};
    std::ofstream(out_dir / "result.json") << result.dump(2) << "\n";
    write_raw(out_dir / "grad_hidden.f32", hidden.grad());
    write_raw(out_dir / "grad_weight.f32", weight.grad());
    return 0;
  } catch (const sftgo::Error& e) {
    std::cerr << "loss_tool: " << sftgo::error_kind_name(e.kind()) << ": " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "loss_tool: " << e.what() << "\n";
    return 1;
  }
}
