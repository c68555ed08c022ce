// Helper for tests/python/test_io_safetensors.py: `st_tool dump PATH` prints every tensor of a
// file, index or model dir as JSON (dtype, shape, hex bytes); `st_tool write DIR MAX_SHARD_BYTES`
// writes a fixed set of tensors as a (possibly sharded) checkpoint with our writer.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"

using namespace sftgo::io;

int main(int argc, char** argv) try {
  if (argc >= 3 && std::string(argv[1]) == "dump") {
    auto ck = SafetensorsCheckpoint::open(argv[2]);
    nlohmann::json out = nlohmann::json::object();
    static const char* kHex = "0123456789abcdef";
    for (const TensorView* v : ck.tensors()) {
      std::string hex;
      for (size_t i = 0; i < v->nbytes; ++i) {
        auto b = static_cast<unsigned char>(v->data[i]);
        hex += kHex[b >> 4];
        hex += kHex[b & 15];
      }
      out[v->name] = {{"dtype", dtype_name(v->dtype)}, {"shape", v->shape}, {"hex", hex}};
    }
    std::cout << nlohmann::json{{"tensors", out}, {"metadata", ck.metadata()}}.dump() << "\n";
    return 0;
  }
  if (argc >= 4 && std::string(argv[1]) == "write") {
    static std::vector<float> f32 = {0.5f, -1.25f, 3.0f, 1e-7f, -0.0f, 65504.f};
    static std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x7f80, 0x0001};  // 1, -2, inf, denormal
    static std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff};           // 1, -2, 65504
    static std::vector<int64_t> i64 = {1, -2, 1LL << 40};
    static std::vector<int32_t> i32 = {7, -7};
    static std::vector<uint8_t> u8 = {0, 255, 3};
    static std::vector<uint8_t> b = {1, 0};
    std::vector<TensorSource> ts = {
        TensorSource::borrow("model.f32", DType::kF32, {2, 3}, f32.data()),
        TensorSource::borrow("model.bf16", DType::kBF16, {4}, bf16.data()),
        TensorSource::borrow("model.f16", DType::kF16, {3, 1}, f16.data()),
        TensorSource::borrow("model.i64", DType::kI64, {3}, i64.data()),
        TensorSource::borrow("model.i32", DType::kI32, {2}, i32.data()),
        TensorSource::borrow("model.u8", DType::kU8, {3}, u8.data()),
        TensorSource::borrow("model.bool", DType::kBool, {2}, b.data()),
        TensorSource::borrow("model.scalar", DType::kF32, {}, f32.data()),
        TensorSource::borrow("model.empty", DType::kF32, {0, 3}, nullptr),
    };
    ShardedWriteOptions opt;
    opt.max_shard_bytes = std::stoull(argv[3]);
    opt.metadata = {{"format", "pt"}};
    write_sharded_safetensors(argv[2], ts, opt);
    return 0;
  }
  std::cerr << "usage: st_tool dump PATH | st_tool write DIR MAX_SHARD_BYTES\n";
  return 2;
} catch (const sftgo::Error& e) {
  std::cerr << e.what() << "\n";
  return 1;
}
