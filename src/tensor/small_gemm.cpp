#include "tensor/small_gemm.h"

namespace dtrain::ops {
namespace {

// One native SIMD register of floats (GCC/Clang vector extension), sized to
// the widest vectors the target was compiled for, so that no vector value
// crosses a function boundary in a width the ABI does not know.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
typedef float Vec __attribute__((vector_size(kVectorBytes)));
constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(float));

inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline float reduce(Vec v) {
  float total = 0.0f;
  for (int i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

// C[MB rows, P] (+)= A[MB, R] . B[R, P]: for each 16-column strip of C, the
// MB x 16 accumulators stay in registers while R rows of B stream by.
template <int MB>
void small_m_block(int64_t r, int64_t p, const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 2 * kLanes <= p; j += 2 * kLanes) {
    Vec acc[MB][2];
    for (int i = 0; i < MB; ++i) {
      acc[i][0] = accumulate ? load(c + i * ldc + j) : Vec{};
      acc[i][1] = accumulate ? load(c + i * ldc + j + kLanes) : Vec{};
    }
    for (int64_t k = 0; k < r; ++k) {
      const Vec b0 = load(b + k * ldb + j);
      const Vec b1 = load(b + k * ldb + j + kLanes);
      for (int i = 0; i < MB; ++i) {
        const float w = a[i * lda + k];
        acc[i][0] += w * b0;
        acc[i][1] += w * b1;
      }
    }
    for (int i = 0; i < MB; ++i) {
      store(c + i * ldc + j, acc[i][0]);
      store(c + i * ldc + j + kLanes, acc[i][1]);
    }
  }
  for (; j < p; ++j) {
    for (int i = 0; i < MB; ++i) {
      float total = accumulate ? c[i * ldc + j] : 0.0f;
      for (int64_t k = 0; k < r; ++k) total += a[i * lda + k] * b[k * ldb + j];
      c[i * ldc + j] = total;
    }
  }
}

// C[MB, NB] (+)= A[MB, K] . B[NB, K]^T with MB*NB lane-wise partial sums:
// each step loads MB + NB vectors for MB * NB multiply-adds.
template <int MB, int NB>
void long_k_block(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc, bool accumulate) {
  Vec acc[MB][NB] = {};
  int64_t t = 0;
  for (; t + kLanes <= k; t += kLanes) {
    Vec av[MB];
    for (int i = 0; i < MB; ++i) av[i] = load(a + i * lda + t);
    for (int j = 0; j < NB; ++j) {
      const Vec bv = load(b + j * ldb + t);
      for (int i = 0; i < MB; ++i) acc[i][j] += av[i] * bv;
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int j = 0; j < NB; ++j) {
      float total = reduce(acc[i][j]);
      for (int64_t u = t; u < k; ++u) total += a[i * lda + u] * b[j * ldb + u];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + total : total;
    }
  }
}

}  // namespace

void gemm_small_m(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) {
    small_m_block<8>(r, p, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  }
  if (m - i >= 6) {
    small_m_block<6>(r, p, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
    i += 6;
  }
  for (; i + 3 <= m; i += 3) {
    small_m_block<3>(r, p, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  }
  for (; i < m; ++i) small_m_block<1>(r, p, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
}

namespace {

template <int MB>
void long_k_rows(int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                 float* c, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    long_k_block<MB, 4>(k, a, lda, b + j * ldb, ldb, c + j, ldc, accumulate);
  for (; j < n; ++j) long_k_block<MB, 1>(k, a, lda, b + j * ldb, ldb, c + j, ldc, accumulate);
}

}  // namespace

void gemm_long_k(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3)
    long_k_rows<3>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  for (; i < m; ++i) long_k_rows<1>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
}

}  // namespace dtrain::ops
