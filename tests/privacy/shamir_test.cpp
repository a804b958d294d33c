#include "privacy/shamir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::privacy {
namespace {

ShamirSecret random_secret(Rng& rng) {
  ShamirSecret s;
  for (auto& byte : s) byte = static_cast<uint8_t>(rng.next_u64());
  return s;
}

std::array<uint8_t, 32> seed_of(uint64_t value) {
  std::array<uint8_t, 32> seed{};
  for (size_t i = 0; i < 8; ++i) seed[i] = static_cast<uint8_t>(value >> (8 * i));
  return seed;
}

std::vector<uint32_t> ids_1_to(uint32_t n) {
  std::vector<uint32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 1U);
  return ids;
}

// Lagrange evaluation at x of the polynomial through the points (xs, ys).
uint64_t interpolate_at(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                        uint64_t x) {
  uint64_t value = 0;
  for (size_t j = 0; j < xs.size(); ++j) {
    uint64_t num = 1;
    uint64_t den = 1;
    for (size_t m = 0; m < xs.size(); ++m) {
      if (m == j) continue;
      num = field_mul(num, field_sub(x, xs[m]));
      den = field_mul(den, field_sub(xs[j], xs[m]));
    }
    value = field_add(value, field_mul(ys[j], field_mul(num, field_inverse(den))));
  }
  return value;
}

TEST(ShamirTest, FieldArithmetic) {
  const uint64_t p = kShamirPrime;
  EXPECT_EQ(field_mul(p - 1, p - 1), 1U);  // (-1)^2
  EXPECT_EQ(field_add(p - 1, 5), 4U);
  EXPECT_EQ(field_sub(3, 5), p - 2);
  Rng rng(7);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t a = 1 + rng.below(p - 1);
    EXPECT_EQ(field_mul(a, field_inverse(a)), 1U) << a;
  }
}

TEST(ShamirTest, AnyThresholdSubsetRecoversTheSecret) {
  Rng rng(1);
  for (uint32_t n : {1U, 2U, 5U, 10U}) {
    for (uint32_t t = 1; t <= n; ++t) {
      const ShamirSecret secret = random_secret(rng);
      const auto ids = ids_1_to(n);
      auto shares = shamir_split(secret, t, ids, seed_of(rng.next_u64()));
      ASSERT_EQ(shares.size(), n);
      for (int trial = 0; trial < 5; ++trial) {
        for (uint32_t i = n; i > 1; --i) std::swap(shares[i - 1], shares[rng.below(i)]);
        EXPECT_EQ(shamir_combine(shares, t), secret) << "n " << n << " t " << t;
      }
    }
  }
}

TEST(ShamirTest, ThousandHoldersBeyondGf256) {
  Rng rng(2);
  const ShamirSecret secret = random_secret(rng);
  const auto ids = ids_1_to(1000);
  auto shares = shamir_split(secret, 501, ids, seed_of(3));
  std::vector<ShamirShare> last(shares.end() - 501, shares.end());
  EXPECT_EQ(shamir_combine(last, 501), secret);
  EXPECT_EQ(last.back().id, 1000U);
}

TEST(ShamirTest, FewerThanThresholdSharesAreRefused) {
  Rng rng(3);
  const auto shares = shamir_split(random_secret(rng), 4, ids_1_to(6), seed_of(4));
  EXPECT_THROW(shamir_combine(std::span(shares).first(3), 4), UsageError);
}

// Information-theoretic hiding: for t - 1 real shares and ANY other secret,
// a polynomial of degree t - 1 passes through both; its value at a new id is
// a share that, with the t - 1 real ones, combines to that other secret.
TEST(ShamirTest, ThresholdMinusOneSharesAreConsistentWithAnySecret) {
  Rng rng(4);
  const uint32_t t = 5;
  const ShamirSecret secret = random_secret(rng);
  const auto shares = shamir_split(secret, t, ids_1_to(9), seed_of(5));
  const std::vector<ShamirShare> seen(shares.begin(), shares.begin() + (t - 1));
  for (int trial = 0; trial < 20; ++trial) {
    const ShamirSecret other = random_secret(rng);
    ShamirShare forged;
    forged.id = 9;
    // The limbs of `other`, as shamir_split cuts them (7 bytes each).
    for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
      uint64_t value = 0;
      for (size_t i = 0; i < 7 && limb * 7 + i < 32; ++i) {
        value |= uint64_t{other[limb * 7 + i]} << (8 * i);
      }
      std::vector<uint64_t> xs{0};
      std::vector<uint64_t> ys{value};
      for (const auto& s : seen) {
        xs.push_back(s.id);
        ys.push_back(s.limbs[limb]);
      }
      forged.limbs[limb] = interpolate_at(xs, ys, forged.id);
    }
    std::vector<ShamirShare> mixed = seen;
    mixed.push_back(forged);
    EXPECT_EQ(shamir_combine(mixed, t), other);
    EXPECT_NE(other, secret);
  }
}

TEST(ShamirTest, SharesOfDifferentSecretsAreDetected) {
  Rng rng(5);
  const auto a = shamir_split(random_secret(rng), 3, ids_1_to(5), seed_of(6));
  const auto b = shamir_split(random_secret(rng), 3, ids_1_to(5), seed_of(7));
  const std::vector<ShamirShare> mixed{a[0], a[1], b[2]};
  EXPECT_THROW(shamir_combine(mixed, 3), UsageError);
}

TEST(ShamirTest, BadArgumentsAreUsageErrors) {
  Rng rng(6);
  const ShamirSecret s = random_secret(rng);
  const std::vector<uint32_t> dup{1, 2, 2};
  const std::vector<uint32_t> zero{0, 1, 2};
  EXPECT_THROW(shamir_split(s, 2, dup, seed_of(1)), UsageError);
  EXPECT_THROW(shamir_split(s, 2, zero, seed_of(1)), UsageError);
  EXPECT_THROW(shamir_split(s, 0, ids_1_to(3), seed_of(1)), UsageError);
  EXPECT_THROW(shamir_split(s, 4, ids_1_to(3), seed_of(1)), UsageError);
}

TEST(ShamirTest, SameSeedSameSharesOtherSeedOtherShares) {
  Rng rng(8);
  const ShamirSecret s = random_secret(rng);
  const auto a = shamir_split(s, 3, ids_1_to(4), seed_of(9));
  const auto b = shamir_split(s, 3, ids_1_to(4), seed_of(9));
  const auto c = shamir_split(s, 3, ids_1_to(4), seed_of(10));
  EXPECT_EQ(a[2].limbs, b[2].limbs);
  EXPECT_NE(a[2].limbs, c[2].limbs);
}

TEST(ShamirTest, WireRoundTripAndValidation) {
  Rng rng(9);
  const auto shares = shamir_split(random_secret(rng), 2, ids_1_to(3), seed_of(11));
  std::array<uint8_t, kShamirShareBytes> bytes{};
  encode_share(shares[1], bytes);
  const ShamirShare back = decode_share(bytes, "test");
  EXPECT_EQ(back.id, shares[1].id);
  EXPECT_EQ(back.limbs, shares[1].limbs);
  auto bad = bytes;
  for (size_t i = 4; i < 12; ++i) bad[i] = 0xff;  // limb 0 = 2^64 - 1 >= p
  EXPECT_THROW(decode_share(bad, "test"), DataError);
  bad = bytes;
  bad[0] = bad[1] = bad[2] = bad[3] = 0;
  EXPECT_THROW(decode_share(bad, "test"), DataError);
}

}  // namespace
}  // namespace dtrain::privacy
