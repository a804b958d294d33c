#include "data/poisson_sampler.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::data {

PoissonSampler::PoissonSampler(int64_t examples, double sample_rate, uint64_t seed)
    : examples_(examples), sample_rate_(sample_rate), seed_(seed) {
  if (examples < 0) throw UsageError(fmt::format("PoissonSampler: examples {} < 0", examples));
  if (!(sample_rate >= 0 && sample_rate <= 1)) {
    throw UsageError(fmt::format("PoissonSampler: sample rate {} is outside [0, 1]", sample_rate));
  }
}

std::vector<int64_t> PoissonSampler::batch(int64_t step) const {
  // One stream per step: the seed's stream, split `step`-independently by
  // mixing the step into the seed (splitmix64 in Rng::seed_with spreads it).
  Rng rng(seed_ ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(step + 1)));
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(expected_batch_size() * 1.25) + 16);
  for (int64_t i = 0; i < examples_; ++i) {
    // 53 random bits: q is resolved to 2^-53, not the 2^-24 of Rng::uniform().
    const double u = static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
    if (u < sample_rate_) out.push_back(i);
  }
  return out;
}

}  // namespace dtrain::data
