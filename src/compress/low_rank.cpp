#include "compress/low_rank.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace dtrain::compress::detail {

namespace {

// Independent partial sums: without -ffast-math the compiler may not
// reorder one float sum, but it vectorises these lanes.
constexpr size_t kLanes = 8;

float dot(const float* a, const float* b, size_t n) {
  float lanes[kLanes] = {};
  size_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lanes[l] += a[k + l] * b[k + l];
  }
  float sum = 0.0f;
  for (const float lane : lanes) sum += lane;
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// y += alpha x.
void axpy(float alpha, const float* x, float* y, size_t n) {
  for (size_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

// [n x r] row-major -> [r x n] row-major.
std::vector<float> transposed(std::span<const float> a, size_t n, size_t r) {
  std::vector<float> t(a.size());
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < r; ++j) t[j * n + i] = a[i * r + j];
  }
  return t;
}

}  // namespace

void multiply(std::span<const float> m, size_t rows, size_t cols, std::span<const float> q,
              size_t r, std::span<float> p) {
  // P[i, j] = M[i, :] . Q^T[j, :], both rows contiguous.
  const std::vector<float> qt = transposed(q, cols, r);
  for (size_t i = 0; i < rows; ++i) {
    const float* mi = m.data() + i * cols;
    for (size_t j = 0; j < r; ++j) p[i * r + j] = dot(mi, qt.data() + j * cols, cols);
  }
}

void multiply_transposed(std::span<const float> m, size_t rows, size_t cols,
                         std::span<const float> p, size_t r, std::span<float> q) {
  // Q^T[j, :] += P[i, j] M[i, :]: r contiguous axpys per row of M.
  std::vector<float> qt(cols * r, 0.0f);
  for (size_t i = 0; i < rows; ++i) {
    const float* mi = m.data() + i * cols;
    for (size_t j = 0; j < r; ++j) axpy(p[i * r + j], mi, qt.data() + j * cols, cols);
  }
  for (size_t k = 0; k < cols; ++k) {
    for (size_t j = 0; j < r; ++j) q[k * r + j] = qt[j * cols + k];
  }
}

void multiply_outer(std::span<const float> p, size_t rows, std::span<const float> q, size_t cols,
                    size_t r, std::span<float> out) {
  // out[i, :] = sum_j P[i, j] Q^T[j, :], j in order.
  const std::vector<float> qt = transposed(q, cols, r);
  for (size_t i = 0; i < rows; ++i) {
    float* oi = out.data() + i * cols;
    std::fill(oi, oi + cols, 0.0f);
    for (size_t j = 0; j < r; ++j) axpy(p[i * r + j], qt.data() + j * cols, oi, cols);
  }
}

void add_outer(std::span<const float> p, size_t rows, std::span<const float> q, size_t cols,
               size_t r, float weight, std::span<float> out) {
  const std::vector<float> qt = transposed(q, cols, r);
  std::vector<float> row(cols);
  for (size_t i = 0; i < rows; ++i) {
    std::fill(row.begin(), row.end(), 0.0f);
    for (size_t j = 0; j < r; ++j) axpy(p[i * r + j], qt.data() + j * cols, row.data(), cols);
    float* oi = out.data() + i * cols;
    for (size_t k = 0; k < cols; ++k) oi[k] += weight * row[k];
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
