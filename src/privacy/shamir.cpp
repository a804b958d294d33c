#include "privacy/shamir.h"

#include <sodium.h>

#include <algorithm>
#include <string>

#include "core/error.h"

namespace dtrain::privacy {

namespace {

__extension__ using U128 = unsigned __int128;

constexpr size_t kLimbBytes = 7;

uint64_t reduce(U128 x) {
  // x < 2^122: fold the high bits twice (2^61 = 1 mod p).
  uint64_t lo = static_cast<uint64_t>(x) & kShamirPrime;
  uint64_t hi = static_cast<uint64_t>(x >> 61);
  uint64_t r = lo + (hi & kShamirPrime) + (hi >> 61);
  r = (r & kShamirPrime) + (r >> 61);
  return r >= kShamirPrime ? r - kShamirPrime : r;
}

// Uniform field elements from ChaCha20 keyed with the seed (rejection of the
// 61-bit values >= p keeps them exactly uniform).
class FieldStream {
 public:
  explicit FieldStream(std::span<const uint8_t, 32> seed) {
    std::copy(seed.begin(), seed.end(), key_.begin());
  }
  uint64_t next() {
    for (;;) {
      if (at_ == buffer_.size()) refill();
      uint64_t v = 0;
      for (size_t i = 0; i < 8; ++i) v |= uint64_t{buffer_[at_ + i]} << (8 * i);
      at_ += 8;
      v &= kShamirPrime;
      if (v < kShamirPrime) return v;
    }
  }

 private:
  void refill() {
    std::array<uint8_t, crypto_stream_chacha20_NONCEBYTES> nonce{};
    crypto_stream_chacha20_xor_ic(buffer_.data(), zeros_.data(), buffer_.size(), nonce.data(),
                                  block_, key_.data());
    block_ += buffer_.size() / 64;
    at_ = 0;
  }
  std::array<uint8_t, 32> key_{};
  std::array<uint8_t, 512> buffer_{};
  std::array<uint8_t, 512> zeros_{};
  size_t at_ = 512;
  uint64_t block_ = 0;
};

void check_ids(std::span<const uint32_t> ids) {
  std::vector<uint32_t> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  if (!sorted.empty() && sorted.front() == 0) {
    throw UsageError("shamir: share id 0 is the secret's own coordinate; ids start at 1");
  }
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) {
    throw UsageError("shamir: share id " + std::to_string(*dup) + " appears twice");
  }
}

}  // namespace

uint64_t field_add(uint64_t a, uint64_t b) {
  const uint64_t r = a + b;
  return r >= kShamirPrime ? r - kShamirPrime : r;
}

uint64_t field_sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kShamirPrime - b; }

uint64_t field_mul(uint64_t a, uint64_t b) { return reduce(static_cast<U128>(a) * b); }

uint64_t field_inverse(uint64_t a) {
  DTRAIN_CHECK(a % kShamirPrime != 0, "shamir: inverse of 0");
  uint64_t result = 1;
  uint64_t base = a % kShamirPrime;
  for (uint64_t e = kShamirPrime - 2; e != 0; e >>= 1) {
    if (e & 1) result = field_mul(result, base);
    base = field_mul(base, base);
  }
  return result;
}

std::vector<ShamirShare> shamir_split(const ShamirSecret& secret, uint32_t threshold,
                                      std::span<const uint32_t> ids,
                                      std::span<const uint8_t, 32> randomness_seed) {
  if (threshold == 0 || threshold > ids.size()) {
    throw UsageError("shamir: threshold " + std::to_string(threshold) + " must be in [1, " +
                     std::to_string(ids.size()) + "] (the number of share ids)");
  }
  check_ids(ids);
  // coefficients[limb][degree]; degree 0 is the limb itself.
  FieldStream stream(randomness_seed);
  std::array<std::vector<uint64_t>, kShamirLimbs> coefficients;
  for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
    uint64_t value = 0;
    const size_t first = limb * kLimbBytes;
    const size_t bytes = std::min(kLimbBytes, kShamirSecretBytes - first);
    for (size_t i = 0; i < bytes; ++i) value |= uint64_t{secret[first + i]} << (8 * i);
    coefficients[limb].resize(threshold);
    coefficients[limb][0] = value;
    for (uint32_t d = 1; d < threshold; ++d) coefficients[limb][d] = stream.next();
  }
  std::vector<ShamirShare> shares(ids.size());
  for (size_t s = 0; s < ids.size(); ++s) {
    shares[s].id = ids[s];
    const uint64_t x = ids[s];
    for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
      // Horner.
      uint64_t y = 0;
      for (uint32_t d = threshold; d-- > 0;) y = field_add(field_mul(y, x), coefficients[limb][d]);
      shares[s].limbs[limb] = y;
    }
  }
  for (auto& limb : coefficients) sodium_memzero(limb.data(), limb.size() * sizeof(uint64_t));
  return shares;
}

std::vector<uint64_t> lagrange_coefficients_at_zero(std::span<const uint32_t> ids) {
  check_ids(ids);
  // l_j(0) = prod_{m != j} x_m / (x_m - x_j).
  std::vector<uint64_t> out(ids.size());
  for (size_t j = 0; j < ids.size(); ++j) {
    uint64_t numerator = 1;
    uint64_t denominator = 1;
    for (size_t m = 0; m < ids.size(); ++m) {
      if (m == j) continue;
      numerator = field_mul(numerator, ids[m]);
      denominator = field_mul(denominator, field_sub(ids[m], ids[j]));
    }
    out[j] = field_mul(numerator, field_inverse(denominator));
  }
  return out;
}

ShamirSecret shamir_combine_with(std::span<const ShamirShare> shares,
                                 std::span<const uint64_t> coefficients) {
  DTRAIN_CHECK(shares.size() == coefficients.size(), "shamir: {} shares, {} coefficients",
               shares.size(), coefficients.size());
  ShamirSecret secret{};
  for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
    uint64_t value = 0;
    for (size_t j = 0; j < shares.size(); ++j) {
      value = field_add(value, field_mul(coefficients[j], shares[j].limbs[limb]));
    }
    const size_t first = limb * kLimbBytes;
    const size_t bytes = std::min(kLimbBytes, kShamirSecretBytes - first);
    if ((value >> (8 * bytes)) != 0) {
      throw UsageError("shamir: the shares interpolate to limb " + std::to_string(limb) +
                       " wider than " + std::to_string(bytes) +
                       " bytes: they are not shares of one secret (or one is corrupted)");
    }
    for (size_t i = 0; i < bytes; ++i) secret[first + i] = static_cast<uint8_t>(value >> (8 * i));
  }
  return secret;
}

ShamirSecret shamir_combine(std::span<const ShamirShare> shares, uint32_t threshold) {
  if (threshold == 0 || shares.size() < threshold) {
    throw UsageError("shamir: " + std::to_string(shares.size()) + " shares, the threshold is " +
                     std::to_string(threshold));
  }
  const auto used = shares.first(threshold);
  std::vector<uint32_t> ids(threshold);
  for (uint32_t j = 0; j < threshold; ++j) ids[j] = used[j].id;
  const std::vector<uint64_t> coefficients = lagrange_coefficients_at_zero(ids);
  return shamir_combine_with(used, coefficients);
}

void encode_share(const ShamirShare& share, std::span<uint8_t, kShamirShareBytes> out) {
  for (size_t i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(share.id >> (8 * i));
  for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
    for (size_t i = 0; i < 8; ++i) {
      out[4 + 8 * limb + i] = static_cast<uint8_t>(share.limbs[limb] >> (8 * i));
    }
  }
}

ShamirShare decode_share(std::span<const uint8_t, kShamirShareBytes> in, const char* context) {
  ShamirShare share;
  for (size_t i = 0; i < 4; ++i) share.id |= uint32_t{in[i]} << (8 * i);
  if (share.id == 0) throw DataError(std::string(context) + ": share id 0");
  for (size_t limb = 0; limb < kShamirLimbs; ++limb) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) v |= uint64_t{in[4 + 8 * limb + i]} << (8 * i);
    if (v >= kShamirPrime) {
      throw DataError(std::string(context) + ": share limb " + std::to_string(limb) + " is " +
                      std::to_string(v) + ", not below the field prime 2^61 - 1");
    }
    share.limbs[limb] = v;
  }
  return share;
}

}  // namespace dtrain::privacy
