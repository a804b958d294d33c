// Register-blocked GEMM kernels for the skinny shapes of convolution layers,
// where a general BLAS spends most of its time packing operands:
//
//   gemm_small_m:  C[M, P] (+)= A[M, R] . B[R, P]      M small (output channels),
//                  P long (output pixels): the M rows of C stay in registers
//                  while B streams through once.
//   gemm_long_k:   C[M, N] (+)= A[M, K] . B[N, K]^T    M, N small, K long
//                  (pixels): blocks of dot products, each operand read once
//                  per block.
//
// Row-major; lda/ldb/ldc are row strides. accumulate=false overwrites C.
// Written as plain loops over fixed-size blocks that the compiler vectorises
// (-O3, and -march=native in release builds); no allocation, no exceptions.
// Thread safety: reentrant.
#pragma once

#include <cstdint>

namespace dtrain::ops {

void gemm_small_m(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate);

void gemm_long_k(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate);

}  // namespace dtrain::ops
