// Rng: a small, fast, seedable random generator whose whole state can be
// saved and restored (checkpoints store it), so the same seed gives the same
// run bit for bit on every platform.
//
// Algorithm: xoshiro256** (Blackman & Vigna 2018), seeded through splitmix64.
// Distributions are implemented here (not std::*_distribution, whose outputs
// differ between standard libraries).
// Thread safety: none; give each thread its own Rng (see split()).
#pragma once

#include <array>
#include <cstdint>

namespace dtrain {

class Rng {
 public:
  using State = std::array<uint64_t, 4>;

  explicit Rng(uint64_t seed = 0) { seed_with(seed); }

  void seed_with(uint64_t seed);
  // Inline: row initialisation draws one per pair of values (ps/sharding.h).
  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 24 random bits (exactly representable as float).
  float uniform();
  // Uniform in [low, high).
  float uniform(float low, float high) { return low + (high - low) * uniform(); }
  // Uniform integer in [0, n); n > 0. Unbiased (rejection).
  uint64_t below(uint64_t n);
  // Standard normal (Box-Muller, one value per call; deterministic).
  float normal();
  float normal(float mean, float stddev) { return mean + stddev * normal(); }
  // An independent generator derived from this one's next output.
  Rng split() { return Rng(next_u64()); }

  State state() const { return s_; }
  void set_state(const State& s) { s_ = s; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  State s_{};
};

}  // namespace dtrain
