#include "tensor/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/blas.h"
#include "tensor/intra_op.h"

namespace dtrain::ops {

void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
void sub(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}
void mul(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}
void div(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] / b[i];
}
void add_inplace(float* __restrict dst, const float* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}
void axpy(float alpha, const float* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += alpha * src[i];
}
void affine(const float* x, float alpha, float beta, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * x[i] + beta;
}

void add_row(const float* a, const float* b, float* out, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) add(a + r * k, b, out + r * k, k);
}
void sub_row(const float* a, const float* b, float* out, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) sub(a + r * k, b, out + r * k, k);
}
void mul_row(const float* a, const float* b, float* out, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) mul(a + r * k, b, out + r * k, k);
}
void div_row(const float* a, const float* b, float* out, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) div(a + r * k, b, out + r * k, k);
}

double sum(const float* x, int64_t n) {
  // Sixteen float partial sums (vectorisable), combined in double.
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int v = 0; v < kLanes; ++v) lanes[v] += x[i + v];
  }
  double total = 0.0;
  for (float lane : lanes) total += lane;
  for (; i < n; ++i) total += x[i];
  return total;
}

double dot(const float* a, const float* b, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(a[i]) * b[i];
  return total;
}

namespace {

// sum_rows over x with row stride ldx (a column range of a wider matrix):
// every column adds its rows in order, so a column's sum is the same
// whichever range of columns one call covers.
void sum_rows_strided(const float* __restrict x, int64_t ldx, float* __restrict out, int64_t m,
                      int64_t k) {
  if (k == 0) return;
  if (m == 0) {
    std::fill_n(out, k, 0.0f);
    return;
  }
  std::memcpy(out, x, static_cast<size_t>(k) * sizeof(float));
  for (int64_t r = 1; r < m; ++r) add_inplace(out, x + r * ldx, k);
}

}  // namespace

void sum_rows(const float* x, float* out, int64_t m, int64_t k) {
  sum_rows_strided(x, k, out, m, k);
}

void sum_rows_product(const float* __restrict a, const float* __restrict b, float* __restrict out,
                      int64_t m, int64_t k) {
  std::fill_n(out, k, 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    const float* ar = a + r * k;
    const float* br = b + r * k;
    for (int64_t j = 0; j < k; ++j) out[j] += ar[j] * br[j];
  }
}

void relu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* gy, const float* y, float* gx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = y[i] > 0.0f ? gy[i] : 0.0f;
}

void sigmoid(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    // Stable on both sides: never exponentiate a large positive number.
    const float e = std::exp(-std::fabs(x[i]));
    y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  }
}

void tanh(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
}  // namespace

void gelu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v)));
  }
}

void gelu_backward(const float* gy, const float* x, float* gx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = std::tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    gx[i] = gy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
  }
}

void softmax_rows(const float* x, float* y, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    float* yr = y + r * k;
    const float top = *std::max_element(xr, xr + k);
    float total = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      yr[j] = std::exp(xr[j] - top);
      total += yr[j];
    }
    const float inv = 1.0f / total;
    for (int64_t j = 0; j < k; ++j) yr[j] *= inv;
  }
}

void log_softmax_rows(const float* x, float* y, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    float* yr = y + r * k;
    const float top = *std::max_element(xr, xr + k);
    float total = 0.0f;
    for (int64_t j = 0; j < k; ++j) total += std::exp(xr[j] - top);
    const float shift = top + std::log(total);
    for (int64_t j = 0; j < k; ++j) yr[j] = xr[j] - shift;
  }
}

void softmax_backward_rows(const float* gy, const float* y, float* gx, int64_t m, int64_t k) {
  for (int64_t r = 0; r < m; ++r) {
    const float* gr = gy + r * k;
    const float* yr = y + r * k;
    float* out = gx + r * k;
    float inner = 0.0f;
    for (int64_t j = 0; j < k; ++j) inner += gr[j] * yr[j];
    for (int64_t j = 0; j < k; ++j) out[j] = yr[j] * (gr[j] - inner);
  }
}

void log_softmax_backward_rows(const float* gy, const float* log_y, float* gx, int64_t m,
                               int64_t k) {
  for (int64_t r = 0; r < m; ++r) {
    const float* gr = gy + r * k;
    const float* lr = log_y + r * k;
    float* out = gx + r * k;
    float total = 0.0f;
    for (int64_t j = 0; j < k; ++j) total += gr[j];
    for (int64_t j = 0; j < k; ++j) out[j] = gr[j] - std::exp(lr[j]) * total;
  }
}

namespace {

// Below this many multiply-adds a dense GEMM is not split: waking the team
// costs more than half of it saves (LeNet-5's last layer at batch 256 has
// 215k, about 10 us on one thread).
constexpr int64_t kMinSplitMacs = int64_t{1} << 18;

// How many parts a dense GEMM of `macs` multiply-adds is split into: the
// intra-op threads when OpenBLAS runs each call on one thread, else 1
// (OpenBLAS splits it, and a split on top would oversubscribe the cores).
int64_t linear_parts(int64_t macs) {
  if (macs < kMinSplitMacs || blas::threads() != 1) return 1;
  return tensor::intra_op_threads();
}

}  // namespace

void linear_forward(const float* x, const float* weight, const float* bias, float* y, int64_t n,
                    int64_t in, int64_t out, bool relu) {
  // Part p: rows [r0, r1) of the batch, y[r0:r1] = x[r0:r1] w^T + b.
  const int64_t parts = std::min(linear_parts(n * in * out), std::max<int64_t>(n, 1));
  tensor::parallel_for_range(parts, [&](int64_t part, int64_t, int) {
    const auto [r0, r1] = tensor::part_range(n, part, parts);
    float beta = 0.0f;
    if (bias != nullptr) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(y + r * out, bias, out * sizeof(float));
      beta = 1.0f;
    }
    blas::sgemm(false, true, r1 - r0, out, in, 1.0f, x + r0 * in, in, weight, in, beta,
                y + r0 * out, out);
    if (relu) ops::relu(y + r0 * out, y + r0 * out, (r1 - r0) * out);
  });
}

void linear_relu_backward(const float* gy, const float* y, float* gx, int64_t n, int64_t in,
                          int64_t out) {
  const int64_t parts = std::min(linear_parts(n * in * out), std::max<int64_t>(n, 1));
  tensor::parallel_for_range(parts, [&](int64_t part, int64_t, int) {
    const auto [r0, r1] = tensor::part_range(n, part, parts);
    relu_backward(gy + r0 * out, y + r0 * out, gx + r0 * out, (r1 - r0) * out);
  });
}

void linear_backward(const float* gy, const float* x, const float* weight, float* gx, float* gw,
                     float* gb, int64_t n, int64_t in, int64_t out) {
  // Part p: gx rows [r0, r1) of the batch, gx[r0:r1] = gy[r0:r1] w, and gw
  // rows [o0, o1) of the outputs, gw[o0:o1] = gy[:, o0:o1]^T x (so every
  // element of gw keeps its whole sum over the batch in one call), and gb
  // [o0, o1), the column sums of gy[:, o0:o1] (bit-identical to one thread).
  const int64_t parts = std::min(linear_parts(n * in * out), std::max<int64_t>(out, 1));
  tensor::parallel_for_range(parts, [&](int64_t part, int64_t, int) {
    if (gx != nullptr) {
      const auto [r0, r1] = tensor::part_range(n, part, parts);
      blas::sgemm(false, false, r1 - r0, in, out, 1.0f, gy + r0 * out, out, weight, in, 0.0f,
                  gx + r0 * in, in);
    }
    const auto [o0, o1] = tensor::part_range(out, part, parts);
    if (gw != nullptr) {
      blas::sgemm(true, false, o1 - o0, in, n, 1.0f, gy + o0, out, x, in, 0.0f, gw + o0 * in, in);
    }
    if (gb != nullptr) sum_rows_strided(gy + o0, out, gb + o0, n, o1 - o0);
  });
}

}  // namespace dtrain::ops
