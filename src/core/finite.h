// Finiteness checks over float arrays, fast enough to run on every gradient
// of every step and on every pushed update.
//
// all_finite() reduces the exponent fields with an integer max, which the
// compiler vectorizes; the obvious float reduction (sum of v * 0, NaN once
// any value is Inf or NaN) is a serial chain of adds without -ffast-math
// (about 0.3 ms per MNIST MLP step, 10% of it). first_non_finite() is for
// the error message only.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace dtrain {

inline bool all_finite(std::span<const float> values) {
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: Inf or NaN
  uint32_t largest = 0;
  for (const float v : values) largest = std::max(largest, std::bit_cast<uint32_t>(v) & kExponent);
  return largest != kExponent;
}

// The index of the first NaN or Inf, if any.
inline std::optional<size_t> first_non_finite(std::span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

}  // namespace dtrain
