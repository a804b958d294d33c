// Helpers of the compress tests: random gradients, one message encoded and
// decoded, a compressor's state arrays by name.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "compress/compressor.h"
#include "core/byte_codec.h"
#include "core/rng.h"

namespace dtrain::compress::testing {

inline std::vector<float> normal_vector(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = scale * rng.normal();
  return v;
}

inline Options options_of(Method method) {
  Options options;
  options.method = method;
  options.min_size = 1;
  return options;
}

inline std::vector<std::byte> encode_one(Compressor& c, size_t tensor, std::span<const float> grad,
                                         int64_t step, int rank = 0) {
  ByteWriter out;
  c.encode(tensor, grad, step, rank, out);
  return out.take();
}

inline std::vector<float> decoded(std::span<const std::byte> message, const TensorLayout& layout) {
  std::vector<float> out(layout.numel(), 0.0f);
  decode_add(message, layout, 1.0f, out, "test");
  return out;
}

// The state array `name` ("residual/0"); empty when the state has none.
inline std::vector<float> state_array(const Compressor& c, const std::string& name) {
  for (const auto& [n, values] : c.save().arrays) {
    if (n == name) return values;
  }
  return {};
}

// y = A B^T for A [rows x r], B [cols x r]: a matrix of rank <= r.
inline std::vector<float> low_rank_matrix(size_t rows, size_t cols, size_t r, uint64_t seed) {
  const std::vector<float> a = normal_vector(rows * r, seed);
  const std::vector<float> b = normal_vector(cols * r, seed + 1);
  std::vector<float> m(rows * cols, 0.0f);
  for (size_t i = 0; i < rows; ++i) {
    for (size_t k = 0; k < cols; ++k) {
      for (size_t j = 0; j < r; ++j) m[i * cols + k] += a[i * r + j] * b[k * r + j];
    }
  }
  return m;
}

inline double norm2(std::span<const float> v) {
  double s = 0.0;
  for (const float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

inline double distance(std::span<const float> a, std::span<const float> b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

}  // namespace dtrain::compress::testing
