#include "privacy/secagg_quantize.h"

#include <cmath>
#include <string>

#include "core/error.h"

namespace dtrain::privacy {

FixedPointCode::FixedPointCode(float clip, uint32_t max_clients) : clip_(clip) {
  if (!(clip > 0.0F) || !std::isfinite(clip)) {
    throw UsageError("secagg quantisation: clip " + std::to_string(clip) +
                     " must be positive and finite");
  }
  if (max_clients == 0) throw UsageError("secagg quantisation: max_clients must be >= 1");
  sum_bits_ = 0;
  while ((uint64_t{1} << sum_bits_) < max_clients) ++sum_bits_;
  if (sum_bits_ > 30) {
    throw UsageError("secagg quantisation: " + std::to_string(max_clients) +
                     " clients leave fewer than 1 bit per value in 32 bits");
  }
  max_level_ = (int64_t{1} << (31 - sum_bits_)) - 1;
  scale_ = static_cast<double>(max_level_) / static_cast<double>(clip);
}

void FixedPointCode::quantize(std::span<const float> values, Rng& rng,
                              std::span<uint32_t> out) const {
  if (values.size() != out.size()) {
    throw UsageError("secagg quantisation: " + std::to_string(values.size()) + " values, " +
                     std::to_string(out.size()) + " outputs");
  }
  const double c = clip_;
  const double top = static_cast<double>(max_level_);
  for (size_t i = 0; i < values.size(); ++i) {
    double x = values[i];
    if (std::isnan(x)) x = 0.0;
    x = std::fmin(std::fmax(x, -c), c);
    const double v = std::fmin(std::fmax(x * scale_, -top), top);
    const double lower = std::floor(v);
    const double u = static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
    int64_t q = static_cast<int64_t>(lower) + (u < v - lower ? 1 : 0);
    if (q > max_level_) q = max_level_;
    out[i] = static_cast<uint32_t>(q);
  }
}

void FixedPointCode::dequantize_sum(std::span<const uint32_t> sum, std::span<float> out) const {
  if (sum.size() != out.size()) {
    throw UsageError("secagg quantisation: " + std::to_string(sum.size()) + " sums, " +
                     std::to_string(out.size()) + " outputs");
  }
  for (size_t i = 0; i < sum.size(); ++i) {
    out[i] = static_cast<float>(static_cast<double>(static_cast<int32_t>(sum[i])) / scale_);
  }
}

}  // namespace dtrain::privacy
