#include "tensor/small_gemm.h"

#include <array>
#include <cstddef>

#include "tensor/small_gemm_variants.h"

namespace dtrain::ops {
namespace {

// AVX-512 needs the CPU's avx512f and the OS's saving of the zmm registers
// (__builtin_cpu_supports tests both); the unit is also built with FMA.
bool cpu_runs_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // in case this runs in a static constructor before libgcc's
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

struct Variants {
  std::array<const SmallGemmKernels*, 2> table{};
  size_t count = 0;
  Variants() {
    if (const SmallGemmKernels* wide = small_gemm_avx512(); wide != nullptr && cpu_runs_avx512()) {
      table[count++] = wide;
    }
    table[count++] = small_gemm_baseline();
  }
};

const Variants& variants() {
  static const Variants chosen;  // immutable once built (thread-safe static initialisation)
  return chosen;
}

}  // namespace

std::span<const SmallGemmKernels* const> small_gemm_variants() {
  const Variants& v = variants();
  return {v.table.data(), v.count};
}

const SmallGemmKernels& small_gemm_kernels() { return *variants().table[0]; }

void gemm_small_m(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  small_gemm_kernels().small_m(m, r, p, a, lda, b, ldb, c, ldc, accumulate);
}

void gemm_long_k(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  small_gemm_kernels().long_k(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

int64_t gemm_small_m_strip() { return small_gemm_kernels().strip; }

int64_t gemm_outer_columns(int64_t n) { return small_gemm_kernels().outer_columns(n); }

void gemm_shifted_outer(int64_t m, int64_t n, int64_t segments, int64_t seg_len,
                        int64_t a_seg_stride, const float* a, const int64_t* a_offsets,
                        const float* b, int64_t ldb, float* c, int64_t ldc) {
  small_gemm_kernels().shifted_outer(m, n, segments, seg_len, a_seg_stride, a, a_offsets, b, ldb, c,
                                     ldc);
}

void gemm_small_m_add_rows(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda,
                           const float* b, int64_t ldb, float* c, const int64_t* c_offsets) {
  small_gemm_kernels().small_m_add_rows(m, r, p, a, lda, b, ldb, c, c_offsets);
}

void gemm_small_m_offsets(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda,
                          const float* b, const int64_t* b_offsets, float* c, int64_t ldc,
                          bool accumulate) {
  small_gemm_kernels().small_m_offsets(m, r, p, a, lda, b, b_offsets, c, ldc, accumulate);
}

}  // namespace dtrain::ops
