// GcmTagger (comm/wire/gcm_tag.h) against libsodium's AES-256-GCM: the same
// tag for random keys, nonces, header sizes 0..256 and payload sizes around
// every boundary of the 512-, 256- and 16-byte steps, the same for a payload
// given in two parts split anywhere or streamed in pieces of any size, and a different tag for any
// changed bit. Skipped (with the reason) on a CPU without VPCLMULQDQ.
#include "comm/wire/gcm_tag.h"

#include <gtest/gtest.h>
#include <sodium.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace dtrain::comm {
namespace {

using Tag = std::array<unsigned char, GcmTagger::kTagBytes>;

Tag sodium_tag(const std::array<unsigned char, 32>& key, const std::array<unsigned char, 12>& nonce,
               const std::vector<std::byte>& header, const std::vector<std::byte>& payload) {
  std::vector<unsigned char> cipher(header.size() + 1);
  Tag tag{};
  unsigned long long tag_bytes = 0;
  crypto_aead_aes256gcm_encrypt_detached(
      cipher.data(), tag.data(), &tag_bytes, reinterpret_cast<const unsigned char*>(header.data()),
      header.size(), reinterpret_cast<const unsigned char*>(payload.data()), payload.size(),
      nullptr, nonce.data(), key.data());
  return tag;
}

Tag fast_tag(const GcmTagger& tagger, const std::array<unsigned char, 12>& nonce,
             const std::vector<std::byte>& header, const std::vector<std::byte>& payload) {
  Tag tag{};
  tagger.tag(nonce, header, payload, tag);
  return tag;
}

std::vector<std::byte> random_bytes(std::mt19937& rng, size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

template <size_t N>
std::array<unsigned char, N> random_array(std::mt19937& rng) {
  std::array<unsigned char, N> out{};
  for (auto& b : out) b = static_cast<unsigned char>(rng());
  return out;
}

class GcmTagTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    if (!GcmTagger::available() || crypto_aead_aes256gcm_is_available() == 0) {
      GTEST_SKIP() << "this CPU lacks AES-NI or AVX-512 VPCLMULQDQ: GcmTagger is not used here";
    }
  }
};

TEST_F(GcmTagTest, MatchesLibsodiumOnEverySizeBoundary) {
  std::mt19937 rng(16);
  const std::vector<size_t> payload_sizes = {
      0,   1,   15,  16,   17,   255,  256,  257,  271,  272,        511,           512,
      513, 767, 768, 1023, 1024, 1295, 1536, 4096, 4097, 65536 + 48, (1u << 20) + 3};
  const std::vector<size_t> header_sizes = {0, 1, 16, 88, 100, 255, 256};
  int compared = 0;
  for (const size_t header_bytes : header_sizes) {
    for (const size_t payload_bytes : payload_sizes) {
      const auto key = random_array<32>(rng);
      const auto nonce = random_array<12>(rng);
      const GcmTagger tagger(key);
      const auto header = random_bytes(rng, header_bytes);
      const auto payload = random_bytes(rng, payload_bytes);
      const Tag expected = sodium_tag(key, nonce, header, payload);
      EXPECT_EQ(fast_tag(tagger, nonce, header, payload), expected)
          << "header " << header_bytes << " B, payload " << payload_bytes << " B";
      ++compared;
    }
  }
  EXPECT_EQ(compared, static_cast<int>(header_sizes.size() * payload_sizes.size()));
}

TEST_F(GcmTagTest, APayloadInTwoPartsHasTheTagOfTheJoinedOne) {
  std::mt19937 rng(18);
  const auto key = random_array<32>(rng);
  const std::array<unsigned char, 12> nonce{};
  const GcmTagger tagger(key);
  const auto header = random_bytes(rng, 88);
  for (const size_t total : {size_t{0}, size_t{40}, size_t{1000}, size_t{4096 + 7}}) {
    const auto payload = random_bytes(rng, total);
    const Tag whole = sodium_tag(key, nonce, header, payload);
    for (const size_t split : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{32},
                               size_t{255}, size_t{256}, size_t{1000}}) {
      if (split > total) continue;
      const std::span<const std::byte> all(payload);
      Tag tag{};
      tagger.tag(nonce, header, all.first(split), all.subspan(split), tag);
      EXPECT_EQ(tag, whole) << "payload " << total << " B split at " << split;
    }
  }
}

TEST_F(GcmTagTest, APayloadStreamedInPiecesHasTheTagOfTheJoinedOne) {
  std::mt19937 rng(19);
  const auto key = random_array<32>(rng);
  const GcmTagger tagger(key);
  for (const size_t total :
       {size_t{0}, size_t{7}, size_t{300}, size_t{4096 + 33}, size_t{(64 << 10) + 5}}) {
    const auto nonce = random_array<12>(rng);
    const auto header = random_bytes(rng, 88);
    const auto payload = random_bytes(rng, total);
    const Tag whole = sodium_tag(key, nonce, header, payload);
    // Piece sizes that straddle 16- and 256-byte steps, fixed and random.
    for (const size_t piece : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{255},
                               size_t{4096}, size_t{16384}, size_t{0}}) {
      GcmTagger::Stream stream;
      const std::span<const std::byte> all(payload);
      size_t at = 0;
      while (at < total) {
        const size_t n = std::min(total - at, piece == 0 ? 1 + rng() % 700 : piece);
        tagger.absorb(stream, all.subspan(at, n));
        at += n;
      }
      Tag tag{};
      tagger.finish(stream, nonce, header, tag);
      EXPECT_EQ(tag, whole) << "payload " << total << " B in pieces of "
                            << (piece == 0 ? std::string("random size")
                                           : std::to_string(piece) + " B");
    }
  }
}

TEST_F(GcmTagTest, AnyFlippedBitChangesTheTag) {
  std::mt19937 rng(17);
  const auto key = random_array<32>(rng);
  std::array<unsigned char, 12> nonce{};
  const GcmTagger tagger(key);
  auto header = random_bytes(rng, 88);
  auto payload = random_bytes(rng, 1000);
  const Tag base = fast_tag(tagger, nonce, header, payload);
  ASSERT_EQ(base, sodium_tag(key, nonce, header, payload));
  for (const size_t at : {size_t{0}, size_t{255}, size_t{256}, size_t{999}}) {
    payload[at] ^= std::byte{0x04};
    EXPECT_NE(fast_tag(tagger, nonce, header, payload), base) << "payload byte " << at;
    payload[at] ^= std::byte{0x04};
  }
  header[87] ^= std::byte{0x80};
  EXPECT_NE(fast_tag(tagger, nonce, header, payload), base);
  header[87] ^= std::byte{0x80};
  nonce[11] ^= 1;
  EXPECT_NE(fast_tag(tagger, nonce, header, payload), base);
  nonce[11] ^= 1;
  // Moving a byte from the end of the payload to the header changes the
  // lengths block even where the concatenated bytes are equal.
  auto shorter = payload;
  shorter.pop_back();
  auto longer = header;
  longer.insert(longer.begin(), payload.back());
  EXPECT_NE(fast_tag(tagger, nonce, longer, shorter), base);
  EXPECT_EQ(fast_tag(tagger, nonce, header, payload), base);
}

}  // namespace
}  // namespace dtrain::comm
