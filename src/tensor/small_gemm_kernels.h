// The register-blocked kernels of tensor/small_gemm.h as templates over the
// target's native vector, for one translation unit per instruction set to
// instantiate: small_gemm_baseline.cpp with the build's flags,
// small_gemm_avx512.cpp with -mavx512f (src/tensor/CMakeLists.txt). Every
// name here has internal linkage, so that no inline function compiled for
// AVX-512 can stand in for the baseline's copy at link time (the units call
// no inline function of another header); kKernels is the including unit's
// table. Include from those two units only.
// Thread safety: reentrant; no allocation, no exceptions.
#pragma once

#include <cstdint>
#include <utility>

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
// Eight floats: the outer products' vector when the columns (output
// channels) are few, so that LeNet-5's 6 channels do not fill 16 lanes.
typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));

template <typename V = Vec>
inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename V>
inline void store(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
inline float reduce(Vec v) {
  float total = 0.0f;
  for (int i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

// Where row k of the B operand starts: rows a fixed stride apart (a stored
// matrix), or at listed offsets from one base (the shifted views of an
// implicit-GEMM convolution, small_gemm.h).
struct StridedRows {
  const float* base;
  int64_t ld;
  const float* operator[](int64_t k) const { return base + k * ld; }
  StridedRows from(int64_t k) const { return {base + k * ld, ld}; }
};
struct OffsetRows {
  const float* base;
  const int64_t* offsets;
  const float* operator[](int64_t k) const { return base + offsets[k]; }
  OffsetRows from(int64_t k) const { return {base, offsets + k}; }
};

// Where row i of the C operand lives and how a block's sums reach it: a
// stored matrix (rows ldc apart; with accumulate the sums start from what
// is there), or rows at listed offsets from one base, possibly overlapping,
// to which the sums are added one row after another (the input gradient's
// col2im, tensor/conv_implicit.h).
struct StridedOut {
  float* base;
  int64_t ld;
  bool accumulate;
  static constexpr bool kAddsRows = false;
  float* operator[](int64_t i) const { return base + i * ld; }
  StridedOut from(int64_t i) const { return {base + i * ld, ld, accumulate}; }
};
struct OffsetAddOut {
  float* base;
  const int64_t* offsets;
  static constexpr bool kAddsRows = true;
  float* operator[](int64_t i) const { return base + offsets[i]; }
  OffsetAddOut from(int64_t i) const { return {base, offsets + i}; }
};

// Columns [j, j + NV vectors) of C[MB rows, P] (+)= A[MB, R] . B[R, P]: the
// MB x NV accumulators stay in registers while R rows of B stream by.
template <int MB, int NV, typename Rows, typename Out>
void small_m_strip(int64_t j, int64_t r, const float* a, int64_t lda, Rows b, Out c) {
  Vec acc[MB][NV];
  for (int i = 0; i < MB; ++i) {
    for (int v = 0; v < NV; ++v) {
      if constexpr (Out::kAddsRows) {
        acc[i][v] = Vec{};
      } else {
        acc[i][v] = c.accumulate ? load(c[i] + j + v * kLanes) : Vec{};
      }
    }
  }
  for (int64_t k = 0; k < r; ++k) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b[k] + j + v * kLanes);
    for (int i = 0; i < MB; ++i) {
      const float w = a[i * lda + k];
      for (int v = 0; v < NV; ++v) acc[i][v] += w * bv[v];
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int v = 0; v < NV; ++v) {
      float* at = c[i] + j + v * kLanes;
      if constexpr (Out::kAddsRows) {
        store(at, load(at) + acc[i][v]);
      } else {
        store(at, acc[i][v]);
      }
    }
  }
}

// C[MB rows, P] (+)= A[MB, R] . B[R, P] in strips of two vectors, then one,
// then single columns.
template <int MB, typename Rows, typename Out>
void small_m_block(int64_t r, int64_t p, const float* a, int64_t lda, Rows b, Out c) {
  int64_t j = 0;
  for (; j + 2 * kLanes <= p; j += 2 * kLanes) small_m_strip<MB, 2>(j, r, a, lda, b, c);
  if (j + kLanes <= p) {
    small_m_strip<MB, 1>(j, r, a, lda, b, c);
    j += kLanes;
  }
  for (; j < p; ++j) {
    for (int i = 0; i < MB; ++i) {
      float total = 0.0f;
      if constexpr (!Out::kAddsRows) total = c.accumulate ? c[i][j] : 0.0f;
      for (int64_t k = 0; k < r; ++k) total += a[i * lda + k] * b[k][j];
      if constexpr (Out::kAddsRows) {
        c[i][j] += total;
      } else {
        c[i][j] = total;
      }
    }
  }
}

// C[MB, NB] (+)= A[MB, K] . B[NB, K]^T with MB*NB lane-wise partial sums:
// each step loads MB + NB vectors for MB * NB multiply-adds.
template <int MB, int NB, typename Rows>
void long_k_block(int64_t k, const float* a, int64_t lda, Rows b, float* c, int64_t ldc,
                  bool accumulate) {
  Vec acc[MB][NB] = {};
  int64_t t = 0;
  for (; t + kLanes <= k; t += kLanes) {
    Vec av[MB];
    for (int i = 0; i < MB; ++i) av[i] = load(a + i * lda + t);
    for (int j = 0; j < NB; ++j) {
      const Vec bv = load(b[j] + t);
      for (int i = 0; i < MB; ++i) acc[i][j] += av[i] * bv;
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int j = 0; j < NB; ++j) {
      float total = reduce(acc[i][j]);
      for (int64_t u = t; u < k; ++u) total += a[i * lda + u] * b[j][u];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + total : total;
    }
  }
}

// C[MB, NV vectors] += sum over segments s and positions t of
// A[i][s * a_seg_stride + t] * B[s * seg_len + t][lanes]: the MB x NV
// accumulators stay in registers over every position; each step loads NV
// vectors of B and broadcasts MB scalars of A.
template <typename V, int MB, int NV>
void outer_block(int64_t segments, int64_t seg_len, int64_t a_seg_stride, const float* a,
                 const int64_t* a_offsets, const float* b, int64_t ldb, float* c, int64_t ldc) {
  constexpr int lanes = sizeof(V) / sizeof(float);
  V acc[MB][NV];
  const float* rows[MB];
  for (int i = 0; i < MB; ++i) {
    rows[i] = a + a_offsets[i];
    for (int v = 0; v < NV; ++v) acc[i][v] = load<V>(c + i * ldc + v * lanes);
  }
  for (int64_t s = 0; s < segments; ++s) {
    const float* bs = b + s * seg_len * ldb;
    const int64_t as = s * a_seg_stride;
    for (int64_t t = 0; t < seg_len; ++t) {
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = load<V>(bs + t * ldb + v * lanes);
      for (int i = 0; i < MB; ++i) {
        const float x = rows[i][as + t];
        for (int v = 0; v < NV; ++v) acc[i][v] += x * bv[v];
      }
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int v = 0; v < NV; ++v) store(c + i * ldc + v * lanes, acc[i][v]);
  }
}

// Rows in blocks of 6, the last 1 to 5 rows in one block of their count (a
// block of one row loads as many B vectors as a block of 6 for a sixth of
// the multiply-adds), 6 + 1 as one block of 7 where the accumulators are one
// vector a row. Every accumulator is one row's lanes, summed over the
// positions in order, so the blocking changes no bit of the result.
template <typename V, int NV>
void outer_rows(int64_t m, int64_t segments, int64_t seg_len, int64_t a_seg_stride, const float* a,
                const int64_t* a_offsets, const float* b, int64_t ldb, float* c, int64_t ldc) {
  auto block = [&]<int MB>(int64_t i) {
    outer_block<V, MB, NV>(segments, seg_len, a_seg_stride, a, a_offsets + i, b, ldb, c + i * ldc,
                           ldc);
  };
  int64_t i = 0;
  for (; m - i >= 6 && !(NV == 1 && m - i == 7); i += 6) block.template operator()<6>(i);
  // The remainder (0 to 5 rows, or 7) as one block of its count.
  [&]<int... Rows>(std::integer_sequence<int, Rows...>) {
    ((m - i == Rows + 1 && (block.template operator()<Rows + 1>(i), true)) || ...);
  }
  (std::make_integer_sequence<int, 7>{});
}

template <typename Rows, typename Out>
void small_m(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, Rows b, Out c) {
  int64_t i = 0;
  if constexpr (kLanes >= 16 && !Out::kAddsRows) {
    // AVX-512's 32 registers hold 8 rows x 2 vectors of accumulators
    // (LeNet-5's conv2 forward, 16 rows: 1.08x faster than 6 + 6 + 4).
    // Rows added at offsets stay in blocks of 6 (one per input channel of
    // LeNet-5's conv2, whose rows never overlap).
    for (; i + 8 <= m; i += 8) small_m_block<8>(r, p, a + i * lda, lda, b, c.from(i));
  }
  for (; i + 6 <= m; i += 6) small_m_block<6>(r, p, a + i * lda, lda, b, c.from(i));
  if (m - i >= 4) {
    small_m_block<4>(r, p, a + i * lda, lda, b, c.from(i));
    i += 4;
  }
  for (; i + 3 <= m; i += 3) small_m_block<3>(r, p, a + i * lda, lda, b, c.from(i));
  for (; i < m; ++i) small_m_block<1>(r, p, a + i * lda, lda, b, c.from(i));
}

template <int MB, typename Rows>
void long_k_rows(int64_t n, int64_t k, const float* a, int64_t lda, Rows b, float* c, int64_t ldc,
                 bool accumulate) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) long_k_block<MB, 4>(k, a, lda, b.from(j), c + j, ldc, accumulate);
  for (; j < n; ++j) long_k_block<MB, 1>(k, a, lda, b.from(j), c + j, ldc, accumulate);
}

template <typename Rows>
void long_k(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, Rows b, float* c,
            int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3)
    long_k_rows<3>(n, k, a + i * lda, lda, b, c + i * ldc, ldc, accumulate);
  for (; i < m; ++i) long_k_rows<1>(n, k, a + i * lda, lda, b, c + i * ldc, ldc, accumulate);
}

void small_m_strided(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  small_m(m, r, p, a, lda, StridedRows{b, ldb}, StridedOut{c, ldc, accumulate});
}

int64_t outer_columns(int64_t n) {
  if (kLanes > 8 && n <= 8) return 8;
  return (n + kLanes - 1) / kLanes * kLanes;
}

void shifted_outer(int64_t m, int64_t n, int64_t segments, int64_t seg_len, int64_t a_seg_stride,
                   const float* a, const int64_t* a_offsets, const float* b, int64_t ldb, float* c,
                   int64_t ldc) {
  if constexpr (kLanes > 8) {  // Vec8 exists in registers only where AVX does
    if (n == 8) {
      outer_rows<Vec8, 1>(m, segments, seg_len, a_seg_stride, a, a_offsets, b, ldb, c, ldc);
      return;
    }
  }
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    outer_rows<Vec, 2>(m, segments, seg_len, a_seg_stride, a, a_offsets, b + j, ldb, c + j, ldc);
  }
  for (; j < n; j += kLanes) {
    outer_rows<Vec, 1>(m, segments, seg_len, a_seg_stride, a, a_offsets, b + j, ldb, c + j, ldc);
  }
}

void small_m_offsets(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                     const int64_t* b_offsets, float* c, int64_t ldc, bool accumulate) {
  small_m(m, r, p, a, lda, OffsetRows{b, b_offsets}, StridedOut{c, ldc, accumulate});
}

void small_m_add_rows(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                      int64_t ldb, float* c, const int64_t* c_offsets) {
  small_m(m, r, p, a, lda, StridedRows{b, ldb}, OffsetAddOut{c, c_offsets});
}

void long_k_strided(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  long_k(m, n, k, a, lda, StridedRows{b, ldb}, c, ldc, accumulate);
}

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
#elif defined(__AVX2__)
constexpr const char* kIsa = "avx2";
#elif defined(__AVX__)
constexpr const char* kIsa = "avx";
#else
constexpr const char* kIsa = "sse2";
#endif

constexpr SmallGemmKernels kKernels{
    kIsa,           kLanes,        outer_columns,    small_m_strided,
    long_k_strided, shifted_outer, small_m_add_rows, small_m_offsets};

}  // namespace
}  // namespace dtrain::ops
