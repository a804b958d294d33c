#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/crc32c.h"
#include "core/deadline.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/trace.h"

namespace dtrain {
namespace {

TEST(Crc32c, MatchesTheStandardCheckValue) {
  const char* text = "123456789";
  EXPECT_EQ(crc32c(text, std::strlen(text)), 0xE3069283u);
  EXPECT_EQ(crc32c(text, 0), 0u);
}

TEST(Crc32c, ExtendEqualsOneShot) {
  std::vector<unsigned char> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 31 + 7);
  const uint32_t whole = crc32c(bytes.data(), bytes.size());
  uint32_t parts = crc32c_extend(0, bytes.data(), 333);
  parts = crc32c_extend(parts, bytes.data() + 333, bytes.size() - 333);
  EXPECT_EQ(whole, parts);
}

// One bit at a time, straight from the definition: what every fast path of
// crc32c_extend must equal.
uint32_t crc32c_bitwise(uint32_t crc, const unsigned char* p, size_t size) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < size; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

// The interleaved streams (blocks of 3 x 256 and 3 x 8192 bytes) at the
// lengths around each block size, at every alignment, from a non-zero start.
TEST(Crc32c, MatchesTheBitwiseDefinitionAtBlockEdgesAndAlignments) {
  Rng rng(11);
  std::vector<unsigned char> bytes(3 * 8192 * 3 + 64);
  for (unsigned char& b : bytes) b = static_cast<unsigned char>(rng.next_u64());
  const std::vector<size_t> lengths{0,
                                    1,
                                    7,
                                    8,
                                    255,
                                    767,
                                    768,
                                    769,
                                    1535,
                                    1536,
                                    2311,
                                    24575,
                                    24576,
                                    24577,
                                    24576 + 768,
                                    24576 * 2 + 1000,
                                    24576 * 3 + 5};
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t length : lengths) {
      const uint32_t start = static_cast<uint32_t>(length * 2654435761u + offset);
      EXPECT_EQ(crc32c_extend(start, bytes.data() + offset, length),
                crc32c_bitwise(start, bytes.data() + offset, length))
          << "length " << length << ", offset " << offset;
    }
  }
}

TEST(Rng, SameSeedSameStream) {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next_u64();
    EXPECT_EQ(x, b.next_u64());
    EXPECT_NE(x, c.next_u64());
  }
}

TEST(Rng, StateRoundTrips) {
  Rng a(7);
  a.normal();
  const Rng::State saved = a.state();
  const float expected = a.uniform();
  Rng b(0);
  b.set_state(saved);
  EXPECT_EQ(b.uniform(), expected);
}

TEST(Rng, DistributionsHaveTheRightMoments) {
  Rng rng(1);
  const int n = 200000;
  double su = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const float u = rng.uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    su += u;
    const double z = rng.normal();
    sn += z;
    sn2 += z * z;
  }
  EXPECT_NEAR(su / n, 0.5, 0.01);
  EXPECT_NEAR(sn / n, 0.0, 0.01);
  EXPECT_NEAR(sn2 / n, 1.0, 0.02);
  for (int i = 0; i < 1000; ++i) EXPECT_LT(rng.below(7), 7u);
}

TEST(Errors, MessagesNameThePeerAndOperation) {
  TimeoutError e(3, "allreduce", std::chrono::milliseconds(500), "chunk 2");
  EXPECT_EQ(e.peer(), 3);
  EXPECT_STREQ(e.what(), "allreduce with rank 3: timed out after 500 ms waiting for chunk 2");
  ConfigError c("job.toml", "optimizer.lr", 12, "expected a number, got a string");
  EXPECT_STREQ(c.what(), "job.toml:12: 'optimizer.lr': expected a number, got a string");
}

TEST(Errors, CheckThrowsInternalErrorWithValues) {
  try {
    int x = 3;
    DTRAIN_CHECK(x == 4, "x is {}", x);
    FAIL() << "no throw";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("x == 4: x is 3"), std::string::npos);
  }
}

TEST(Deadline, ExpiresAndClamps) {
  EXPECT_TRUE(Deadline::after(std::chrono::milliseconds(0)).expired());
  EXPECT_FALSE(Deadline::never().expired());
  EXPECT_EQ(Deadline::after(std::chrono::milliseconds(-5)).remaining().count(), 0);
}

// Cristian's estimate keeps the exchange with the smallest round trip and
// assumes the reference answered half-way through it.
TEST(CristianEstimate, KeepsTheShortestRoundTrip) {
  CristianEstimate e;
  e.add(1000, 400, 1100);  // rtt 100: offset 1050 - 400 = 650
  EXPECT_EQ(e.offset_us(), 650);
  EXPECT_EQ(e.rtt_us(), 100);
  e.add(2000, 1300, 2040);  // rtt 40: offset 2020 - 1300 = 720
  e.add(3000, 0, 3090);     // rtt 90: ignored
  EXPECT_EQ(e.offset_us(), 720);
  EXPECT_EQ(e.rtt_us(), 40);
  EXPECT_EQ(e.samples(), 3);
}

}  // namespace
}  // namespace dtrain
