#include "compress/low_rank.h"

#include <algorithm>
#include <cmath>

namespace dtrain::compress::detail {

void multiply(std::span<const float> m, size_t rows, size_t cols, std::span<const float> q,
              size_t r, std::span<float> p) {
  std::fill(p.begin(), p.end(), 0.0f);
  for (size_t i = 0; i < rows; ++i) {
    const float* mi = m.data() + i * cols;
    float* pi = p.data() + i * r;
    for (size_t k = 0; k < cols; ++k) {
      const float mik = mi[k];
      const float* qk = q.data() + k * r;
      for (size_t j = 0; j < r; ++j) pi[j] += mik * qk[j];
    }
  }
}

void multiply_transposed(std::span<const float> m, size_t rows, size_t cols,
                         std::span<const float> p, size_t r, std::span<float> q) {
  std::fill(q.begin(), q.end(), 0.0f);
  for (size_t i = 0; i < rows; ++i) {
    const float* mi = m.data() + i * cols;
    const float* pi = p.data() + i * r;
    for (size_t k = 0; k < cols; ++k) {
      const float mik = mi[k];
      float* qk = q.data() + k * r;
      for (size_t j = 0; j < r; ++j) qk[j] += mik * pi[j];
    }
  }
}

void multiply_outer(std::span<const float> p, size_t rows, std::span<const float> q, size_t cols,
                    size_t r, std::span<float> out) {
  for (size_t i = 0; i < rows; ++i) {
    const float* pi = p.data() + i * r;
    float* oi = out.data() + i * cols;
    for (size_t k = 0; k < cols; ++k) {
      const float* qk = q.data() + k * r;
      float sum = 0.0f;
      for (size_t j = 0; j < r; ++j) sum += pi[j] * qk[j];
      oi[k] = sum;
    }
  }
}

void orthogonalize_columns(std::span<float> a, size_t rows, size_t r) {
  for (size_t i = 0; i < r; ++i) {
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t j = 0; j < i; ++j) {
        double dot = 0.0;
        for (size_t row = 0; row < rows; ++row) {
          dot += static_cast<double>(a[row * r + i]) * a[row * r + j];
        }
        const auto d = static_cast<float>(dot);
        for (size_t row = 0; row < rows; ++row) a[row * r + i] -= d * a[row * r + j];
      }
    }
    double squares = 0.0;
    for (size_t row = 0; row < rows; ++row) {
      squares += static_cast<double>(a[row * r + i]) * a[row * r + i];
    }
    const double scale = 1.0 / (std::sqrt(squares) + kOrthogonalizeEpsilon);
    for (size_t row = 0; row < rows; ++row) {
      a[row * r + i] = static_cast<float>(a[row * r + i] * scale);
    }
  }
}

}  // namespace dtrain::compress::detail
