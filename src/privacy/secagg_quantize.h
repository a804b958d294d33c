// Fixed-point quantisation for secure aggregation: floats to Z_(2^32) and
// back, such that the modular sum of up to `max_clients` quantised vectors
// never wraps.
//
// The rule: each value is clipped to [-clip, clip] and scaled by
//   scale = q_max / clip,  q_max = 2^(31 - ceil(log2 max_clients)) - 1,
// then rounded stochastically to an integer q in [-q_max, q_max] (floor(v)
// or floor(v) + 1 with probability frac(v): unbiased, E[q] = v). A sum of n <=
// max_clients such integers lies in [-n q_max, n q_max], and n q_max <
// 2^ceil(log2 n) 2^(31 - ceil(log2 n)) = 2^31, so the sum read as a signed
// 32-bit integer is exact; ceil(log2 max_clients) bits are reserved for the
// sum and one for the sign. The server divides that signed integer by scale.
//
// Error bound: each value's rounding error |q / scale - clip(x)| < 1 / scale,
// so the dequantised sum of n vectors is within n / scale of the sum of the
// clipped values, for every entry and always (the stochastic error is also
// zero-mean, with standard deviation at most sqrt(n) / (2 scale)). With
// clip = 1 and 1,000 clients, scale = 2^21 - 1: the sum is within 4.8e-4.
//
// Randomness: the caller's seeded dtrain::Rng (53-bit uniforms).
// Errors: UsageError for clip <= 0 or not finite, max_clients == 0, or
// vectors of different lengths. NaN inputs are clipped to 0 (a NaN has no
// place in a sum; the caller's DP or finiteness check reports it earlier).
// Thread safety: values; one thread per Rng. Never blocks.
#pragma once

#include <cstdint>
#include <span>

#include "core/rng.h"

namespace dtrain::privacy {

class FixedPointCode {
 public:
  FixedPointCode(float clip, uint32_t max_clients);

  float clip() const { return clip_; }
  // The largest |q| of one value (2^(31 - sum_bits) - 1).
  int64_t max_level() const { return max_level_; }
  double scale() const { return scale_; }
  // ceil(log2 max_clients).
  uint32_t sum_bits() const { return sum_bits_; }
  // The bound on |dequantised sum - sum of clipped values| for `clients`
  // summands: clients / scale.
  double sum_error_bound(uint32_t clients) const { return clients / scale_; }

  void quantize(std::span<const float> values, Rng& rng, std::span<uint32_t> out) const;
  // The modular sum, read as signed, divided by scale.
  void dequantize_sum(std::span<const uint32_t> sum, std::span<float> out) const;

 private:
  float clip_;
  uint32_t sum_bits_;
  int64_t max_level_;
  double scale_;
};

}  // namespace dtrain::privacy
