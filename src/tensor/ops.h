// Element-wise, reduction, softmax and dense-layer kernels on raw float
// arrays (the autograd functions in src/autograd call them on Tensor data).
//
// Shape legend: n element count; M rows, K columns of a row-major matrix;
// N batch, I input features, O output features.
// Contract: every pointer addresses at least as many floats as the sizes
// say; an output may alias an input only where noted. The kernels never
// allocate and never throw; the dense layer splits its work over the
// process's intra-op threads (tensor/intra_op.h), and its GEMMs run on the
// BLAS threads the process configured.
// Thread safety: reentrant.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace dtrain::ops {

// ---- element-wise (out may alias a or b; x and out of affine may alias) ----
void add(const float* a, const float* b, float* out, int64_t n);
void sub(const float* a, const float* b, float* out, int64_t n);
void mul(const float* a, const float* b, float* out, int64_t n);
void div(const float* a, const float* b, float* out, int64_t n);
// dst += src
void add_inplace(float* dst, const float* src, int64_t n);
// dst += alpha * src
void axpy(float alpha, const float* src, float* dst, int64_t n);
// out = alpha * x + beta
void affine(const float* x, float alpha, float beta, float* out, int64_t n);

// ---- row broadcasting: a is [M, K], b is [K] (out may alias a) ----
void add_row(const float* a, const float* b, float* out, int64_t m, int64_t k);
void sub_row(const float* a, const float* b, float* out, int64_t m, int64_t k);
void mul_row(const float* a, const float* b, float* out, int64_t m, int64_t k);
void div_row(const float* a, const float* b, float* out, int64_t m, int64_t k);

// ---- reductions ----
double sum(const float* x, int64_t n);
double dot(const float* a, const float* b, int64_t n);
// out[k] = sum over rows of x[m, k]: [M, K] -> [K] (column sums).
void sum_rows(const float* x, float* out, int64_t m, int64_t k);
// out[k] = sum over rows of a[m, k] * b[m, k]: [M, K] x [M, K] -> [K].
void sum_rows_product(const float* a, const float* b, float* out, int64_t m, int64_t k);

// ---- activations ----
void relu(const float* x, float* y, int64_t n);
// gx = gy where y > 0, else 0 (one pass, the mask read from the output).
void relu_backward(const float* gy, const float* y, float* gx, int64_t n);
void sigmoid(const float* x, float* y, int64_t n);
void tanh(const float* x, float* y, int64_t n);
// tanh approximation (torch approximate='tanh'); gx = gy * gelu'(x).
void gelu(const float* x, float* y, int64_t n);
void gelu_backward(const float* gy, const float* x, float* gx, int64_t n);

// ---- softmax along the last dimension of [M, K] (numerically stable) ----
void softmax_rows(const float* x, float* y, int64_t m, int64_t k);
void log_softmax_rows(const float* x, float* y, int64_t m, int64_t k);
// gx = y * (gy - sum_k(gy * y)) per row.
void softmax_backward_rows(const float* gy, const float* y, float* gx, int64_t m, int64_t k);
// gx = gy - softmax(x) * sum_k(gy) per row, with softmax(x) = exp(log_y).
void log_softmax_backward_rows(const float* gy, const float* log_y, float* gx, int64_t m,
                               int64_t k);

// ---- dense layer: x [N, I], weight [O, I], bias [O] or nullptr ----
// Threads: with more than one intra-op thread (tensor/intra_op.h), OpenBLAS
// at one thread and at least 2^18 multiply-adds, each GEMM is split into
// contiguous row ranges, one OpenBLAS call per part: y and gx by rows of the
// batch, gw by output rows (every element keeps its whole sum over the batch
// in one call, in the same order). Not bit-identical to one thread all the
// same: OpenBLAS picks its kernel by the call's shape (small-matrix kernels,
// row tails), and some sum in another order, so the last bits of an element
// can differ with the thread count (IntraOp.LinearWithThreadsMatchesOneThread).
// With OpenBLAS threads, OpenBLAS splits each GEMM itself.
// y [N, O] = x w^T + b: bias copied into each row, then one GEMM with beta 1;
// with relu, y = max(0, x w^T + b), each part clamping its own rows.
void linear_forward(const float* x, const float* weight, const float* bias, float* y, int64_t n,
                    int64_t in, int64_t out, bool relu = false);
// gx [N, O] = gy where y > 0, else 0 (relu_backward), rows split over the
// intra-op threads like linear_forward's (element-wise: the same bits).
void linear_relu_backward(const float* gy, const float* y, float* gx, int64_t n, int64_t in,
                          int64_t out);
// gx [N, I] = gy w (nullptr: skipped); gw [O, I] = gy^T x (overwritten);
// gb [O] = column sums of gy (nullptr: skipped; split with gw's output rows,
// each column summed over the batch in order: bit-identical to one thread).
void linear_backward(const float* gy, const float* x, const float* weight, float* gx, float* gw,
                     float* gb, int64_t n, int64_t in, int64_t out);

}  // namespace dtrain::ops
