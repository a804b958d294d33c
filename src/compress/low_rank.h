// The small dense kernels of PowerSGD (internal to compress; no BLAS here:
// the module uses only core). Row-major float matrices. r (the rank) is
// small, so the kernels work on Q^T [r x cols] (a transposed copy, r * cols
// floats): every inner loop runs along a row of M and a row of Q^T, both
// contiguous - dot products with 8 independent partial sums (M Q) or
// axpys (M^T P, P Q^T), which the compiler vectorises.
//
// Shape legend: M [rows x cols] the gradient matrix, P [rows x r],
// Q [cols x r], all row-major.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <cstddef>
#include <span>

namespace dtrain::compress::detail {

// P = M Q.
void multiply(std::span<const float> m, size_t rows, size_t cols, std::span<const float> q,
              size_t r, std::span<float> p);

// Q = M^T P.
void multiply_transposed(std::span<const float> m, size_t rows, size_t cols,
                         std::span<const float> p, size_t r, std::span<float> q);

// out = P Q^T ([rows x cols]).
void multiply_outer(std::span<const float> p, size_t rows, std::span<const float> q, size_t cols,
                    size_t r, std::span<float> out);

// out += weight P Q^T; with weight 1 on zeros, exactly multiply_outer's values.
void add_outer(std::span<const float> p, size_t rows, std::span<const float> q, size_t cols,
               size_t r, float weight, std::span<float> out);

// Makes the r columns of A [rows x r] orthonormal by Gram-Schmidt, in
// order (column i minus its projections on columns 0..i-1, done twice -
// "twice is enough", Giraud et al. 2005 - then divided by its norm plus
// kOrthogonalizeEpsilon, as PyTorch's _orthogonalize_gram_schmidt with an
// epsilon). Dot products in double. A zero column stays zero.
inline constexpr double kOrthogonalizeEpsilon = 1e-20;
void orthogonalize_columns(std::span<float> a, size_t rows, size_t r);

}  // namespace dtrain::compress::detail
