// The LibTorch-side core helpers: device and dtype names (torch_device.h). A binary of its own
// because test_core stays LibTorch-free.
#include <gtest/gtest.h>

#include <torch/cuda.h>

#include "sftgo/core/error.h"
#include "sftgo/core/format.h"
#include "sftgo/core/torch_device.h"

namespace sftgo {
namespace {

template <typename Fn>
Error error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected an sftgo::Error";
  return Error(ErrorKind::kInternal, "", "", "");
}

TEST(TorchDevice, ParsesNamesAndResolvesAuto) {
  EXPECT_EQ(parse_device("cpu", "model.device"), c10::Device(c10::kCPU));
  if (torch::cuda::is_available()) {
    EXPECT_EQ(parse_device("auto", "model.device"), c10::Device(c10::kCUDA, 0));
    EXPECT_EQ(parse_device("cuda", "model.device"), c10::Device(c10::kCUDA, 0));
    EXPECT_EQ(parse_device("cuda:0", "model.device"), c10::Device(c10::kCUDA, 0));
    const int n = static_cast<int>(torch::cuda::device_count());
    EXPECT_EQ(error_of([&] { parse_device("cuda:" + std::to_string(n), "model.device"); }).kind(), ErrorKind::kConfig);
  } else {
    EXPECT_EQ(parse_device("auto", "model.device"), c10::Device(c10::kCPU));
    const Error e = error_of([] { parse_device("cuda", "model.device"); });
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(e.message().find("model.device"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("no CUDA device"), std::string::npos) << e.message();
    EXPECT_EQ(error_of([] { parse_device("cuda:1", "--device", ErrorKind::kUsage); }).kind(), ErrorKind::kUsage);
  }
}

TEST(TorchDevice, UnknownNamesNameTheKey) {
  for (const char* bad : {"tpu", "", "cuda:x", "CPU ", "meta"}) {
    const Error e = error_of([&] { parse_device(bad, "grouping.llmlingua2_device"); });
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << bad;
    EXPECT_NE(e.message().find("grouping.llmlingua2_device"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("expected auto, cpu, cuda or cuda:N"), std::string::npos) << e.message();
  }
  EXPECT_EQ(error_of([] { parse_device("tpu", "--device", ErrorKind::kUsage); }).kind(), ErrorKind::kUsage);
}

TEST(TorchDevice, Dtypes) {
  EXPECT_EQ(parse_dtype("float32", "model.dtype"), c10::kFloat);
  EXPECT_EQ(parse_dtype("bfloat16", "model.dtype"), c10::kBFloat16);
  for (const char* bad : {"fp32", "bf16", "float16", ""}) {
    const Error e = error_of([&] { parse_dtype(bad, "--dtype", ErrorKind::kUsage); });
    EXPECT_EQ(e.kind(), ErrorKind::kUsage) << bad;
    EXPECT_NE(e.message().find("--dtype must be float32 or bfloat16"), std::string::npos) << e.message();
  }
  // dtype_name reads back what parse_dtype takes (and HF's torch_dtype for float16).
  for (const char* name : {"float32", "bfloat16"}) EXPECT_STREQ(dtype_name(parse_dtype(name, "x")), name);
  EXPECT_STREQ(dtype_name(c10::kHalf), "float16");
}

// sftgo::format from a LibTorch target, whose include path holds LibTorch's own fmt 12: the header
// captures arguments only, and Debian's fmt in libsftgo_core renders them (docs/architecture.md).
TEST(Format, WorksInALibTorchTranslationUnit) {
  EXPECT_EQ(format("{1} {0:.2f} {2}", 0.123, "x", c10::Device(c10::kCPU)), "x 0.12 cpu");
}

}  // namespace
}  // namespace sftgo
