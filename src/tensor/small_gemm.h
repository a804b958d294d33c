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
// The *_offsets forms take B's rows at b + b_offsets[row] instead of a fixed
// stride: the rows of an unfolded input are shifted views of the padded
// input itself (implicit GEMM, tensor/conv_implicit.h), so nothing is
// unfolded. Every row must be readable for the whole length (p or k).
// Written as plain loops over fixed-size blocks that the compiler vectorises
// (-O3, and -march=native in release builds); no allocation, no exceptions.
//
// Instruction sets: the loops are compiled once with the build's flags and,
// where the compiler can emit AVX-512, once more with -mavx512f whatever the
// build's -march (small_gemm_kernels.h; GCC 12 builds everything else without
// AVX-512, CMakeLists.txt says why). The free functions below run
// small_gemm_kernels(), the widest variant the CPU supports, chosen once at
// first use; the conv layer's ImplicitConv can be given any variant, so that
// tests run every one the CPU supports. Variants differ in vector width, so
// in the order of their sums (results agree to rounding, not bit for bit);
// one variant gives the same bits for any thread count.
// Thread safety: reentrant.
#pragma once

#include <cstdint>
#include <span>

namespace dtrain::ops {

void gemm_small_m(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate);

void gemm_long_k(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate);

// The column granularity of gemm_small_m's vector path (one native vector):
// a p that is a multiple of it runs without a scalar tail.
int64_t gemm_small_m_strip();

// The columns gemm_shifted_outer computes for n: n rounded up to a whole
// vector (of 8 floats where n <= 8 and the native vector is wider).
int64_t gemm_outer_columns(int64_t n);

// C[M, N] += A . B with A[i] shifted rows read in segments: the sum over
// s < segments and t < seg_len of A[i][s * a_seg_stride + t] * B[s * seg_len
// + t][:], where A's row i starts at a + a_offsets[i]. For the weight
// gradient of an implicit-GEMM convolution (rows: the padded input's shifts;
// segments: output rows, skipping the discarded grid positions; B: the
// output gradient transposed). N must be gemm_outer_columns(N): ldb, ldc >=
// N, B's padding columns readable, C's written.
void gemm_shifted_outer(int64_t m, int64_t n, int64_t segments, int64_t seg_len,
                        int64_t a_seg_stride, const float* a, const int64_t* a_offsets,
                        const float* b, int64_t ldb, float* c, int64_t ldc);

// C[i] += (A . B)[i] with row i of C at c + c_offsets[i]: the rows may
// overlap (each row's sums are added after the previous rows' are stored;
// rows that overlap within one block of 6 only cost speed). For the input
// gradient of an implicit-GEMM convolution, whose rows land on the padded
// input at their shifts (col2im without the unfolded matrix).
void gemm_small_m_add_rows(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda,
                           const float* b, int64_t ldb, float* c, const int64_t* c_offsets);

void gemm_small_m_offsets(int64_t m, int64_t r, int64_t p, const float* a, int64_t lda,
                          const float* b, const int64_t* b_offsets, float* c, int64_t ldc,
                          bool accumulate);

// One instruction set's build of the kernels above, same contracts; strip
// and outer_columns are gemm_small_m_strip() and gemm_outer_columns() of
// that build. Tables are static: pointers to them stay valid for the
// program's life.
struct SmallGemmKernels {
  const char* isa;  // the widest vectors it was compiled for: avx512, avx2, avx or sse2
  int64_t strip;
  int64_t (*outer_columns)(int64_t n);
  decltype(&gemm_small_m) small_m;
  decltype(&gemm_long_k) long_k;
  decltype(&gemm_shifted_outer) shifted_outer;
  decltype(&gemm_small_m_add_rows) small_m_add_rows;
  decltype(&gemm_small_m_offsets) small_m_offsets;
};

// Every variant this CPU can run, the widest first (the build's own always
// last; AVX-512 first where it was compiled and the CPU and OS support it).
std::span<const SmallGemmKernels* const> small_gemm_variants();

// The variant the free functions run: small_gemm_variants()[0].
const SmallGemmKernels& small_gemm_kernels();

}  // namespace dtrain::ops
