// hash64 (pinned values: they name cache files) and SHA-256 (NIST vectors and Python hashlib; the
// vectors that tests/grouping/test_llmlingua2.cpp checked when SHA-256 lived there are here too).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../common/temp_dir.h"
#include "sftgo/core/error.h"
#include "sftgo/core/hash.h"
#include "sftgo/core/strings.h"

namespace sftgo {
namespace {

// Deterministic test bytes: xorshift64 (13, 7, 17), low byte per step; the same generator is in
// the Python snippets below.
std::string test_bytes(size_t n, uint64_t seed) {
  std::string out;
  uint64_t s = seed;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    out.push_back(static_cast<char>(s & 0xff));
  }
  return out;
}
constexpr uint64_t kSeedBase = 0x2545F4914F6CDD1DULL;

TEST(Sha256, NistVectors) {
  // FIPS 180-2 appendix B: "abc", the two-block 448-bit message, one million 'a'; plus the empty string.
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");  // padding spills into a 2nd block
  EXPECT_EQ(sha256_hex(std::string(1000, 'a')), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, MatchesPythonHashlibAcrossPaddingBoundaries) {
  // Expected values from Python's hashlib:
  //   hashlib.sha256(test_bytes(n, 0x2545F4914F6CDD1D + n)).hexdigest()
  // Lengths straddle the padding cases: 55/56 (length field fits / spills), 63/64/65, 119/120, 127/128.
  const std::vector<std::pair<size_t, std::string>> cases = {
      {1, "09fc96082d34c2dfc1295d92073b5ea1dc8ef8da95f14dfded011ffb96d3e54b"},
      {55, "7b85eeafce2052896fbb0d82192b633b698212294e27ce91a810f0c042c04f7a"},
      {56, "857043887c6d727e3fdccec1445c4a65c433d3422327c7c79aa77868fa3999ed"},
      {63, "9dd153ae6f14903c285d3ea8770e7832521f4abe5c1e72d4982a77d5c34048d6"},
      {64, "0b5bc3dc33bbaee4abec50af9d21951fc1e442572c78787b89e358219dfa6266"},
      {65, "1f1e5b0472e5f1be898c02ac716eff6646501b142fb6acb7cf2e14678966ef86"},
      {119, "b6e6aa514efcc833c68e0f2648ad02d5c99d217de71187f6a9d41964de1feb97"},
      {120, "e04bffc854e147a6cf722decbaedabac82285bc2214f4f6568aff61577692cba"},
      {127, "87a6d663aee89d7f4a0b1ed043c7b462726ed72472fb49a52f5ba0c11eb5f575"},
      {128, "c1bb954dd14a5f2aac1d1eae3c37a9ec52ba2cb108fb7944ffebc9cbf6f6638e"},
      {1000, "ee923ddf318998be5259381068bbfbf69a0d64c3a80b0714e11b04548ab62856"},
      {4097, "cdea28540d207eb5a999af5fe7839485ca9a8ba1ef304b384eba615306957a24"},
  };
  for (const auto& [n, hex] : cases) EXPECT_EQ(sha256_hex(test_bytes(n, kSeedBase + n)), hex) << "length " << n;
}

TEST(Sha256, FileAndMissingFile) {
  test_util::TempDir dir;
  const std::string path = dir.path() + "/f.bin";
  write_file_atomic(path, "abc");
  EXPECT_EQ(sha256_file(path), sha256_hex("abc"));
  try {
    sha256_file(dir.path() + "/missing.bin");
    FAIL() << "expected an I/O error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(e.message().find("missing.bin"), std::string::npos) << e.message();
  }
}

TEST(Hash64, PinnedValues) {
  // hash64 values name cache files and sit inside them: a change here must come with a cache
  // version bump. Expected values from an independent Python transcription of the algorithm in
  // hash.h (FNV-1a over little-endian 8-byte words, fold >> 29, tail bytes, splitmix64 finaliser).
  auto h = [](std::string_view s, uint64_t seed = kHash64Seed) { return hash64(s.data(), s.size(), seed); };
  EXPECT_EQ(h(""), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(h("a"), 0x6e65d20e2a315fa6ULL);
  EXPECT_EQ(h("abc"), 0xba437d901fe6f1b7ULL);
  EXPECT_EQ(h("abcdefgh"), 0xd90973faa334ff57ULL);   // one whole word
  EXPECT_EQ(h("abcdefghi"), 0xea8366bf61d77415ULL);  // a word and a tail byte
  EXPECT_EQ(h(test_bytes(100, kSeedBase + 100)), 0x0c36d26b416be487ULL);
  EXPECT_EQ(h("abc", 42), 0x1b515fbacc204673ULL);
  EXPECT_EQ(hash64(nullptr, 0), h(""));
  // The length is part of the hash (zero words would otherwise leave FNV's state unchanged).
  EXPECT_NE(h(std::string(8, '\0')), h(std::string(16, '\0')));
}

}  // namespace
}  // namespace sftgo
