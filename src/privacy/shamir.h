// Shamir t-of-n secret sharing of 32-byte secrets over the prime field
// GF(p), p = 2^61 - 1 (a Mersenne prime: reduction is a shift and an add).
//
// Why not a library: Debian's libgfshare works in GF(2^8), so it has at most
// 255 share ids; secure aggregation with 1,000 clients needs ids 1..1000.
// GF(2^61 - 1) has ids up to 2^61 - 2 and needs only 64x64 -> 128-bit
// multiplication.
//
// A secret of 32 bytes is cut into kShamirLimbs = 5 limbs of 7 bytes (56 bits,
// each < p; the last limb holds the remaining 4 bytes), and each limb is
// shared with its own random polynomial of degree t - 1 whose constant term is
// the limb (Shamir 1979). A share is (id, the 5 polynomial values at x = id),
// 4 + 5 * 8 = 44 bytes on the wire. Any t shares with distinct ids give the
// secret back by Lagrange interpolation at 0; t - 1 shares are information-
// theoretically independent of the secret: for every candidate secret there
// is exactly one polynomial of degree t - 1 through the t - 1 points and it,
// so every secret is equally likely given them (the coefficients are uniform).
//
// Randomness: the caller passes a 32-byte seed; the coefficients are drawn
// from ChaCha20 keyed with it (libsodium), so a fresh random seed per secret
// (randombytes_buf) gives uniform coefficients, and a fixed seed makes tests
// reproducible. Never share two secrets with the same seed.
//
// Errors: UsageError for t == 0, t > n, duplicate or zero ids, fewer than t
// shares to combine; DataError (from decode) for malformed bytes.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::privacy {

inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;
inline constexpr size_t kShamirLimbs = 5;
inline constexpr size_t kShamirSecretBytes = 32;
// id (u32) + the limbs (u64 each), little-endian.
inline constexpr size_t kShamirShareBytes = 4 + 8 * kShamirLimbs;

using ShamirSecret = std::array<uint8_t, kShamirSecretBytes>;

struct ShamirShare {
  uint32_t id = 0;                             // the x coordinate, >= 1
  std::array<uint64_t, kShamirLimbs> limbs{};  // each < kShamirPrime
};

// Field arithmetic (exposed for tests and for the interpolation helpers).
uint64_t field_add(uint64_t a, uint64_t b);
uint64_t field_sub(uint64_t a, uint64_t b);
uint64_t field_mul(uint64_t a, uint64_t b);
// a^(p-2); a != 0.
uint64_t field_inverse(uint64_t a);

// Shares `secret` with threshold t among the given ids (distinct, >= 1).
std::vector<ShamirShare> shamir_split(const ShamirSecret& secret, uint32_t threshold,
                                      std::span<const uint32_t> ids,
                                      std::span<const uint8_t, 32> randomness_seed);

// The Lagrange coefficients at 0 for these ids (distinct, >= 1):
// secret = sum_j coefficient_j * share_j. Computed once per set of ids and
// reused for every secret shared among the same holders.
std::vector<uint64_t> lagrange_coefficients_at_zero(std::span<const uint32_t> ids);

// The secret from the first `threshold` shares (distinct ids). UsageError
// when fewer are given, or when the limbs decode to more than 32 bytes (shares
// of different secrets, or a corrupted share: Shamir alone cannot tell which).
ShamirSecret shamir_combine(std::span<const ShamirShare> shares, uint32_t threshold);
// The same with precomputed coefficients for exactly these shares' ids.
ShamirSecret shamir_combine_with(std::span<const ShamirShare> shares,
                                 std::span<const uint64_t> coefficients);

// Wire form: kShamirShareBytes. decode throws DataError naming `context`
// when a limb is not below p or the id is 0.
void encode_share(const ShamirShare& share, std::span<uint8_t, kShamirShareBytes> out);
ShamirShare decode_share(std::span<const uint8_t, kShamirShareBytes> in, const char* context);

}  // namespace dtrain::privacy
