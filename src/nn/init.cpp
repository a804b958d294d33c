#include "nn/init.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"

namespace dtrain::nn::init {

namespace {

int64_t receptive_field(const Shape& shape) {
  if (shape.size() < 2) {
    throw UsageError(
        fmt::format("init: fan-in and fan-out need a weight of at least 2 dimensions, got shape {}",
                    shape_str(shape)));
  }
  int64_t field = 1;
  for (size_t d = 2; d < shape.size(); ++d) field *= shape[d];
  return field;
}

}  // namespace

int64_t fan_in(const Shape& shape) {
  const int64_t field = receptive_field(shape);
  return shape[1] * field;
}

int64_t fan_out(const Shape& shape) {
  const int64_t field = receptive_field(shape);
  return shape[0] * field;
}

void uniform(const Tensor& tensor, float low, float high, Rng& rng) {
  if (!(low <= high)) {
    throw UsageError(fmt::format("init::uniform: low {} is above high {}", low, high));
  }
  float* data = tensor.data();
  const int64_t n = tensor.numel();
  for (int64_t i = 0; i < n; ++i) data[i] = rng.uniform(low, high);
}

void normal(const Tensor& tensor, float mean, float stddev, Rng& rng) {
  if (!(stddev >= 0.0f)) {
    throw UsageError(fmt::format("init::normal: stddev {} is negative", stddev));
  }
  float* data = tensor.data();
  const int64_t n = tensor.numel();
  for (int64_t i = 0; i < n; ++i) data[i] = rng.normal(mean, stddev);
}

void constant(const Tensor& tensor, float value) { tensor.fill(value); }

void kaiming_uniform(const Tensor& tensor, float a, Rng& rng) {
  const int64_t fan = fan_in(tensor.shape());
  if (fan == 0) return;  // an empty weight has nothing to fill
  const double gain = std::sqrt(2.0 / (1.0 + static_cast<double>(a) * a));
  const auto bound = static_cast<float>(gain * std::sqrt(3.0 / static_cast<double>(fan)));
  uniform(tensor, -bound, bound, rng);
}

void xavier_uniform(const Tensor& tensor, float gain, Rng& rng) {
  const int64_t fans = fan_in(tensor.shape()) + fan_out(tensor.shape());
  if (fans == 0) return;
  const auto bound = static_cast<float>(gain * std::sqrt(6.0 / static_cast<double>(fans)));
  uniform(tensor, -bound, bound, rng);
}

}  // namespace dtrain::nn::init
