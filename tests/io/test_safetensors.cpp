// safetensors reader/writer: round trips and every malformed-input case the reader must reject.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sftgo/core/error.h"
#include "sftgo/io/safetensors.h"

namespace fs = std::filesystem;
using namespace sftgo;
using namespace sftgo::io;

namespace {

fs::path temp_dir() {
  static fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("sftgo_test_io_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// Raw file from a header string and a data section, so tests can build any malformed file.
std::string raw_file(const std::string& header, const std::string& data, std::optional<uint64_t> len = {}) {
  uint64_t n = len.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

std::string put(const std::string& name, const std::string& bytes) {
  fs::path p = temp_dir() / name;
  std::ofstream(p, std::ios::binary) << bytes;
  return p.string();
}

// Expects open() to throw a kFormat/kIo error whose message contains every `needle`.
void expect_error(const std::string& path, std::initializer_list<std::string> needles,
                  ErrorKind kind = ErrorKind::kFormat) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected an error for " << path;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

std::string bytes_of(size_t n, char fill = 'x') { return std::string(n, fill); }

}  // namespace

TEST(Safetensors, DTypes) {
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(parse_dtype("BF16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("BOOL"), DType::kBool);
  EXPECT_FALSE(parse_dtype("F7").has_value());
  EXPECT_STREQ(dtype_name(DType::kF16), "F16");
}

TEST(Safetensors, RoundTripSingleFile) {
  std::vector<float> a = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  std::vector<uint16_t> b = {0x3f80, 0x4000};  // bf16 1.0, 2.0
  std::vector<int64_t> c = {7, -8, 9};
  std::vector<uint8_t> d = {1, 0, 1};
  std::string path = (temp_dir() / "rt.safetensors").string();
  write_safetensors(
      path,
      {TensorSource::borrow("a", DType::kF32, {2, 3}, a.data()), TensorSource::borrow("b", DType::kBF16, {2}, b.data()),
       TensorSource::borrow("c", DType::kI64, {3}, c.data()), TensorSource::borrow("d", DType::kBool, {3}, d.data()),
       TensorSource::borrow("empty", DType::kF32, {0, 4}, nullptr),
       TensorSource::borrow("scalar", DType::kF32, {}, a.data())},
      {{"format", "pt"}});
  EXPECT_FALSE(fs::exists(path + ".tmp-" + std::to_string(::getpid())));
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 6u);
  const TensorView* va = f->find("a");
  ASSERT_NE(va, nullptr);
  EXPECT_EQ(va->dtype, DType::kF32);
  EXPECT_EQ(va->shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(va->nbytes, 24u);
  EXPECT_EQ(std::memcmp(va->data, a.data(), 24), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->tensors().front().data) % 8, 0u);  // aligned data section
  EXPECT_EQ(std::memcmp(f->find("b")->data, b.data(), 4), 0);
  EXPECT_EQ(std::memcmp(f->find("c")->data, c.data(), 24), 0);
  EXPECT_EQ(f->find("empty")->nbytes, 0u);
  EXPECT_EQ(f->find("scalar")->numel(), 1);
  EXPECT_EQ(f->find("nope"), nullptr);
  // The checkpoint view of a single file.
  auto ck = SafetensorsCheckpoint::open(path);
  EXPECT_EQ(ck.size(), 6u);
  EXPECT_NE(ck.find("d"), nullptr);
}

TEST(Safetensors, RoundTripSharded) {
  std::vector<std::vector<float>> data;
  std::vector<TensorSource> ts;
  for (int i = 0; i < 5; ++i) data.emplace_back(100, static_cast<float>(i));
  for (int i = 0; i < 5; ++i)
    ts.push_back(TensorSource::borrow("t" + std::to_string(i), DType::kF32, {10, 10}, data[i].data()));
  std::string dir = (temp_dir() / "sharded").string();
  ShardedWriteOptions opt;
  opt.max_shard_bytes = 900;  // 400-byte tensors: two per shard -> 3 shards
  auto names = write_sharded_safetensors(dir, ts, opt, {{"config.json", "{}"}});
  ASSERT_EQ(names.size(), 3u);
  EXPECT_EQ(names[0], "model-00001-of-00003.safetensors");
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "config.json"));
  auto ck = SafetensorsCheckpoint::open(dir);
  EXPECT_EQ(ck.files().size(), 3u);
  EXPECT_EQ(ck.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    const TensorView* v = ck.find("t" + std::to_string(i));
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(std::memcmp(v->data, data[i].data(), 400), 0);
  }
  // Overwriting replaces the old checkpoint wholesale (no stale shards survive).
  opt.max_shard_bytes = 1 << 20;
  names = write_sharded_safetensors(dir, ts, opt);
  ASSERT_EQ(names.size(), 1u);
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model-00001-of-00003.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir).size(), 5u);
  for (const auto& e : fs::directory_iterator(temp_dir()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(Safetensors, InterruptedShardedSaveKeepsOldCheckpoint) {
  std::vector<float> a(16, 1.f);
  std::string dir = (temp_dir() / "atomic").string();
  write_sharded_safetensors(dir, {TensorSource::borrow("a", DType::kF32, {16}, a.data())});
  TensorSource bad{"b", DType::kF32, {4}, []() -> std::shared_ptr<const std::byte> {
                     throw std::runtime_error("simulated failure mid-save");
                   }};
  EXPECT_THROW(write_sharded_safetensors(dir, {TensorSource::borrow("a", DType::kF32, {16}, a.data()), bad}),
               std::runtime_error);
  auto ck = SafetensorsCheckpoint::open(dir);
  EXPECT_EQ(ck.size(), 1u);
  EXPECT_FALSE(fs::exists(dir + ".tmp-" + std::to_string(::getpid())));
}

TEST(Safetensors, WriterRejectsDuplicates) {
  float x = 1.f;
  EXPECT_THROW(
      write_safetensors((temp_dir() / "dup.safetensors").string(), {TensorSource::borrow("a", DType::kF32, {1}, &x),
                                                                    TensorSource::borrow("a", DType::kF32, {1}, &x)}),
      Error);
}

TEST(SafetensorsBad, Truncated) {
  expect_error(put("short.st", "abc"), {"short.st", "fewer than the 8-byte"});
  // A valid file cut in the middle of its data.
  std::string good = raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", bytes_of(16));
  expect_error(put("cut.st", good.substr(0, good.size() - 5)), {"cut.st", "'w'", "beyond the data section"});
}

TEST(SafetensorsBad, HeaderLengthBeyondFile) {
  expect_error(put("hlen.st", raw_file("{}", "", 1000)), {"hlen.st", "beyond the file size"});
  expect_error(put("hbomb.st", raw_file("{}", "", uint64_t{1} << 40)), {"hbomb.st", "exceeds the limit"});
}

TEST(SafetensorsBad, OverlapAndOutOfRange) {
  expect_error(put("overlap.st", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                          bytes_of(12))),
               {"overlap.st", "'b'", "overlap"});
  expect_error(put("range.st", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                        bytes_of(12))),
               {"range.st", "'b'", "beyond the data section"});
  expect_error(put("hole.st", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", bytes_of(8))),
               {"hole.st", "'a'", "hole"});
  expect_error(put("trail.st", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", bytes_of(8))),
               {"trail.st", "unindexed"});
  expect_error(put("rev.st", raw_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", bytes_of(4))),
               {"rev.st", "'a'", "reversed"});
}

TEST(SafetensorsBad, UnknownDtypeAndSizeMismatch) {
  expect_error(put("dtype.st", raw_file(R"({"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", bytes_of(4))),
               {"dtype.st", "'a'", "unknown dtype 'F7'"});
  expect_error(put("size.st", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", bytes_of(8))),
               {"size.st", "'a'", "needs 12 bytes"});
  expect_error(
      put("ovf.st", raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "")),
      {"ovf.st", "'a'", "overflows"});
  expect_error(put("neg.st", raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", "")),
               {"neg.st", "'a'", "non-negative"});
  expect_error(put("noshape.st", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,0]}})", "")),
               {"noshape.st", "'a'", "shape"});
}

TEST(SafetensorsBad, JsonProblems) {
  expect_error(put("utf8.st", raw_file("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", "")),
               {"utf8.st", "UTF-8"});
  expect_error(put("json.st", raw_file(R"({"a":{"dtype":"F32",)", "")), {"json.st", "not valid JSON"});
  expect_error(put("notobj.st", raw_file("[1, 2]", "")), {"notobj.st", "'{'"});
  expect_error(put("meta.st", raw_file(R"({"__metadata__":{"k":1}})", "")), {"meta.st", "__metadata__"});
  expect_error(put("dupkey.st", raw_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                         R"("a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
                                         "")),
               {"dupkey.st", "duplicate key 'a'"});
  // Trailing space padding is allowed by the spec.
  auto f = SafetensorsFile::open(put("pad.st", raw_file(R"({"__metadata__":{"k":"v"}}   )", "")));
  EXPECT_EQ(f->metadata().at("k"), "v");
}

TEST(SafetensorsBad, MissingFileAndBadIndex) {
  expect_error((temp_dir() / "does_not_exist.st").string(), {"does_not_exist.st"}, ErrorKind::kIo);
  // An index that points at a tensor its shard lacks, and a shard with a tensor the index omits.
  float x[2] = {1.f, 2.f};
  fs::path d = temp_dir() / "badindex";
  fs::create_directories(d);
  write_safetensors((d / "s1.safetensors").string(), {TensorSource::borrow("a", DType::kF32, {2}, x),
                                                      TensorSource::borrow("extra", DType::kF32, {1}, x)});
  std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map":{"a":"s1.safetensors"}})";
  try {
    SafetensorsCheckpoint::open(d.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'extra'"), std::string::npos) << e.what();
  }
  std::ofstream(d / "model.safetensors.index.json")
      << R"({"weight_map":{"a":"s1.safetensors","extra":"s1.safetensors","gone":"s1.safetensors"}})";
  try {
    SafetensorsCheckpoint::open(d.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'gone'"), std::string::npos) << e.what();
  }
}
