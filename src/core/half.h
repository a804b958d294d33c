// 16-bit floats on the wire: IEEE binary16 ("fp16") and bfloat16 ("bf16"),
// converted with round-to-nearest-even. Used where dtrain halves the bytes
// of a float message (comm's 16-bit allreduce, compress's fp16/bf16).
//
// fp16 has 5 exponent bits: its largest finite value is 65504 and values
// below 2^-24 flush to zero, so callers scale first (comm scales each message
// by its largest magnitude, which makes overflow impossible). bf16 keeps
// float32's 8 exponent bits (same range, 8 bits of precision) and needs no
// scaling. NaN stays NaN, infinities stay infinite.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <bit>
#include <cstdint>
#include <span>

namespace dtrain {

inline uint16_t float_to_fp16(float value) {
  return std::bit_cast<uint16_t>(static_cast<_Float16>(value));
}
inline float fp16_to_float(uint16_t bits) {
  return static_cast<float>(std::bit_cast<_Float16>(bits));
}

inline uint16_t float_to_bf16(float value) {
  const auto bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}
inline float bf16_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

// The largest finite fp16 value.
inline constexpr float kFp16Max = 65504.0f;

}  // namespace dtrain
