// A thin row-major wrapper over cblas_sgemm, so that kernels read like the
// math: C = alpha * op(A) * op(B) + beta * C, with op(X) = X or X^T.
//
// A is M x K after op, B is K x N after op, C is M x N; lda/ldb/ldc are the
// row strides of A, B and C as stored (before op). No allocation; the thread
// count is whatever the process configured for OpenBLAS (this wrapper never
// changes global BLAS settings; threads() reads it).
// Thread safety: reentrant. Errors: none (shapes are the caller's contract).
#pragma once

#include <cstdint>

namespace dtrain::blas {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The number of threads OpenBLAS splits one GEMM over (at least 1).
int threads();

}  // namespace dtrain::blas
