// Kernels against naive references: GEMM wrappers and the blocked kernels,
// im2col/col2im against a direct convolution and its adjoint identity,
// pooling fast paths against the generic ones, reductions, softmax.
#include "tensor/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "tensor/blas.h"
#include "tensor/conv_implicit.h"
#include "tensor/conv_kernels.h"
#include "tensor/small_gemm.h"

namespace dtrain {
namespace {

std::vector<float> random_values(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform(-1.0f, 1.0f);
  return v;
}

// C[M, N] = op(A) op(B), straightforward triple loop in double.
std::vector<float> naive_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                              const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double total = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const float x = ta ? a[t * m + i] : a[i * k + t];
        const float y = tb ? b[j * k + t] : b[t * n + j];
        total += static_cast<double>(x) * y;
      }
      c[i * n + j] = static_cast<float>(total);
    }
  }
  return c;
}

void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "element " << i;
}

TEST(Blas, SgemmAllTranspositionsAndBeta) {
  const int64_t m = 5, n = 7, k = 3;
  const auto a = random_values(m * k, 1);
  const auto b = random_values(k * n, 2);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << ta << " trans_b " << tb);
      std::vector<float> c(m * n, 1.0f);
      blas::sgemm(ta, tb, m, n, k, 2.0f, a.data(), ta ? m : k, b.data(), tb ? k : n, 0.5f, c.data(),
                  n);
      auto want = naive_gemm(ta, tb, m, n, k, a, b);
      for (float& w : want) w = 2.0f * w + 0.5f;
      expect_near_all(c, want, 1e-5f);
    }
  }
  std::vector<float> c(m * n, 3.0f);
  blas::sgemm(false, false, m, n, 0, 1.0f, a.data(), 1, b.data(), n, 0.0f, c.data(), n);
  EXPECT_EQ(c, std::vector<float>(m * n, 0.0f));
}

// Every variant of the kernels this CPU runs (tensor/small_gemm.h), the
// widest first: AVX-512 on a CPU that has it, whatever the build's -march.
TEST(SmallGemm, VariantsIncludeTheBuildsOwnAndAvx512WhereTheCpuHasIt) {
  const auto variants = ops::small_gemm_variants();
  ASSERT_FALSE(variants.empty());
  EXPECT_EQ(&ops::small_gemm_kernels(), variants[0]);
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    EXPECT_STREQ(variants[0]->isa, "avx512");
    EXPECT_EQ(variants[0]->strip, 16);
  }
#endif
  for (const ops::SmallGemmKernels* k : variants) {
    std::printf("small_gemm variant %s: strip %ld\n", k->isa, static_cast<long>(k->strip));
  }
}

TEST(SmallGemm, MatchesNaiveOnOddSizes) {
  for (const ops::SmallGemmKernels* kernels : ops::small_gemm_variants()) {
    SCOPED_TRACE(kernels->isa);
    for (int64_t m : {1, 3, 6, 7, 16, 19}) {
      for (int64_t r : {1, 5, 25, 40}) {
        for (int64_t p : {1, 15, 16, 33, 100}) {
          SCOPED_TRACE(::testing::Message() << "m " << m << " r " << r << " p " << p);
          const auto a = random_values(m * r, 3);
          const auto b = random_values(r * p, 4);
          std::vector<float> c(m * p, 0.5f);
          kernels->small_m(m, r, p, a.data(), r, b.data(), p, c.data(), p, true);
          auto want = naive_gemm(false, false, m, p, r, a, b);
          for (float& w : want) w += 0.5f;
          expect_near_all(c, want, 1e-4f);
          // C[m, r] = A[m, p] . B[r, p]^T, overwriting.
          const auto g = random_values(m * p, 5);
          const auto col = random_values(r * p, 6);
          std::vector<float> d(m * r, 9.0f);
          kernels->long_k(m, r, p, g.data(), p, col.data(), p, d.data(), r, false);
          expect_near_all(d, naive_gemm(false, true, m, r, p, g, col), 1e-4f);
        }
      }
    }
  }
}

// Rows of C added at offsets that overlap (each row one float after the
// previous, as the rows of one input channel in an implicit convolution's
// input gradient) and that repeat: every row's sums must land, whatever
// block of the kernel they share.
TEST(SmallGemm, AddRowsAtOverlappingOffsetsMatchesNaive) {
  for (const ops::SmallGemmKernels* kernels : ops::small_gemm_variants()) {
    SCOPED_TRACE(kernels->isa);
    for (int64_t m : {1, 7, 13}) {
      for (int64_t p : {5, 16, 37}) {
        SCOPED_TRACE(::testing::Message() << "m " << m << " p " << p);
        const int64_t r = 9;
        const auto a = random_values(m * r, 7);
        const auto b = random_values(r * p, 8);
        std::vector<int64_t> offsets(m);
        for (int64_t i = 0; i < m; ++i) offsets[i] = i % 2 == 0 ? i : 3;
        std::vector<float> c(m + p + 3, 0.25f);
        kernels->small_m_add_rows(m, r, p, a.data(), r, b.data(), p, c.data(), offsets.data());
        const auto product = naive_gemm(false, false, m, p, r, a, b);
        std::vector<float> want(c.size(), 0.25f);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < p; ++j) want[offsets[i] + j] += product[i * p + j];
        expect_near_all(c, want, 1e-4f);
      }
    }
  }
}

// Direct convolution of one [C, H, W] sample with [O, C, K, K] weights.
std::vector<float> direct_conv(const std::vector<float>& x, const std::vector<float>& w,
                               const ops::Conv2dGeometry& g, int64_t o) {
  std::vector<float> y(static_cast<size_t>(g.n * o * g.oh * g.ow), 0.0f);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t oc = 0; oc < o; ++oc)
      for (int64_t oh = 0; oh < g.oh; ++oh)
        for (int64_t ow = 0; ow < g.ow; ++ow) {
          double total = 0.0;
          for (int64_t c = 0; c < g.c; ++c)
            for (int64_t kh = 0; kh < g.k; ++kh)
              for (int64_t kw = 0; kw < g.k; ++kw) {
                const int64_t ih = oh * g.stride - g.pad + kh;
                const int64_t iw = ow * g.stride - g.pad + kw;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                total += static_cast<double>(x[((n * g.c + c) * g.h + ih) * g.w + iw]) *
                         w[((oc * g.c + c) * g.k + kh) * g.k + kw];
              }
          y[((n * o + oc) * g.oh + oh) * g.ow + ow] = static_cast<float>(total);
        }
  return y;
}

TEST(Im2col, GemmEqualsDirectConvolutionAndCol2imIsTheAdjoint) {
  struct Case {
    int64_t n, c, h, w, k, stride, pad;
  };
  for (const Case& t :
       {Case{2, 1, 7, 9, 3, 1, 1}, Case{1, 3, 8, 8, 5, 1, 2}, Case{2, 2, 9, 7, 3, 2, 1},
        Case{1, 2, 6, 6, 2, 2, 0}, Case{1, 1, 4, 4, 3, 3, 2}}) {
    SCOPED_TRACE(::testing::Message()
                 << "c " << t.c << " k " << t.k << " stride " << t.stride << " pad " << t.pad);
    ops::Conv2dGeometry g{t.n, t.c, t.h, t.w, t.k, t.stride, t.pad, 0, 0};
    g.oh = (t.h + 2 * t.pad - t.k) / t.stride + 1;
    g.ow = (t.w + 2 * t.pad - t.k) / t.stride + 1;
    const int64_t o = 4;
    const auto x = random_values(t.n * t.c * t.h * t.w, 7);
    const auto w = random_values(o * g.col_rows(), 8);
    std::vector<float> col(g.col_rows() * g.col_cols());
    ops::im2col(x.data(), g, col.data());
    // yg [O, N*OH*OW] -> compare per (n, o) with the direct result.
    const auto yg = naive_gemm(false, false, o, g.col_cols(), g.col_rows(), w, col);
    const auto want = direct_conv(x, w, g, o);
    const int64_t plane = g.oh * g.ow;
    for (int64_t n = 0; n < t.n; ++n)
      for (int64_t oc = 0; oc < o; ++oc)
        for (int64_t p = 0; p < plane; ++p)
          ASSERT_NEAR(yg[oc * g.col_cols() + n * plane + p], want[(n * o + oc) * plane + p], 1e-4f);
    // <im2col(x), d> == <x, col2im(d)> for a random d.
    const auto d = random_values(col.size(), 9);
    std::vector<float> back(x.size());
    ops::col2im(d.data(), g, back.data());
    double lhs = 0.0;
    double rhs = 0.0;
    for (size_t i = 0; i < col.size(); ++i) lhs += static_cast<double>(col[i]) * d[i];
    for (size_t i = 0; i < x.size(); ++i) rhs += static_cast<double>(x[i]) * back[i];
    EXPECT_NEAR(lhs, rhs, 1e-3);
  }
}

// The implicit GEMM against the direct convolution (forward) and against
// im2col and its adjoint (weight, bias and input gradients), on LeNet-5's
// shapes and odd ones: several samples (the discarded grid positions of one
// read the next), padding wider than the kernel's reach, one output row.
TEST(ImplicitConv, MatchesDirectConvolutionAndIm2colGradients) {
  struct Case {
    int64_t n, c, h, w, k, pad, o;
  };
  for (const ops::SmallGemmKernels* kernels : ops::small_gemm_variants()) {
    for (const Case& t :
         {Case{3, 1, 28, 28, 5, 2, 6}, Case{2, 6, 14, 14, 5, 0, 16}, Case{2, 2, 5, 7, 3, 1, 17},
          Case{1, 3, 3, 9, 3, 0, 9}, Case{2, 1, 4, 4, 3, 3, 2}}) {
      SCOPED_TRACE(::testing::Message() << kernels->isa << ": c " << t.c << " k " << t.k << " pad "
                                        << t.pad << " o " << t.o);
      ops::Conv2dGeometry g{t.n, t.c, t.h, t.w, t.k, 1, t.pad, 0, 0};
      g.oh = t.h + 2 * t.pad - t.k + 1;
      g.ow = t.w + 2 * t.pad - t.k + 1;
      const int64_t r = g.col_rows(), q = g.oh * g.ow;
      const auto x = random_values(t.n * t.c * t.h * t.w, 11);
      const auto w = random_values(t.o * r, 12);
      const auto bias = random_values(t.o, 13);
      const auto gy = random_values(t.n * t.o * q, 14);
      const ops::ImplicitConv conv(g, *kernels);
      std::vector<float> xpad(conv.padded_floats(), NAN);
      conv.pad_input(x.data(), xpad.data());
      std::vector<float> scratch(conv.scratch_floats(t.o));
      std::vector<float> y(gy.size());
      conv.forward(xpad.data(), w.data(), t.o, bias.data(), y.data(), scratch.data());
      auto want = direct_conv(x, w, g, t.o);
      for (size_t i = 0; i < want.size(); ++i) want[i] += bias[(i / q) % t.o];
      expect_near_all(y, want, 1e-4f);
      // References: gW = sum_n gy_n . col_n^T, gb = sums of gy, gx = col2im(W^T gy).
      std::vector<float> col(r * g.col_cols());
      ops::im2col(x.data(), g, col.data());
      std::vector<float> gw_want(t.o * r, 0.0f), gb_want(t.o, 0.0f), dcol(col.size());
      for (int64_t n = 0; n < t.n; ++n)
        for (int64_t o = 0; o < t.o; ++o)
          for (int64_t p = 0; p < q; ++p) {
            const float v = gy[(n * t.o + o) * q + p];
            gb_want[o] += v;
            for (int64_t i = 0; i < r; ++i) {
              gw_want[o * r + i] += v * col[i * g.col_cols() + n * q + p];
              dcol[i * g.col_cols() + n * q + p] += w[o * r + i] * v;
            }
          }
      std::vector<float> gx_want(x.size());
      ops::col2im(dcol.data(), g, gx_want.data());
      std::vector<float> gw(gw_want.size(), NAN), gb(t.o, NAN), gx(x.size(), NAN);
      std::vector<float> wscratch(conv.weight_grad_scratch_floats(t.o));
      conv.weight_grad(xpad.data(), gy.data(), t.o, gw.data(), gb.data(), wscratch.data());
      expect_near_all(gw, gw_want, 5e-3f);
      expect_near_all(gb, gb_want, 1e-3f);
      std::vector<float> iscratch(conv.input_grad_scratch_floats(t.o));
      conv.input_grad(gy.data(), w.data(), t.o, gx.data(), iscratch.data());
      expect_near_all(gx, gx_want, 1e-3f);
    }
  }
}

TEST(Pooling, FastMaxPathMatchesGenericAndBackwardRoutesToArgmax) {
  // Width 20: ten outputs per row, eight through the vector path and two
  // through the scalar tail.
  ops::Conv2dGeometry g{1, 1, 6, 20, 2, 2, 0, 3, 10};
  const int64_t planes = 3;
  const int64_t plane = 6 * 20;
  auto x = random_values(planes * plane, 10);
  x[5] = x[4];  // a tie inside one window
  std::vector<float> y(planes * 30);
  std::vector<int32_t> argmax(y.size());
  ops::max_pool2d_forward(x.data(), planes, g, y.data(), argmax.data());
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < 3; ++oh)
      for (int64_t ow = 0; ow < 10; ++ow) {
        float best = -1e30f;
        int64_t where = -1;
        for (int64_t i = 0; i < 2; ++i)
          for (int64_t j = 0; j < 2; ++j) {
            const int64_t at = (2 * oh + i) * 20 + 2 * ow + j;
            if (x[p * plane + at] > best) {
              best = x[p * plane + at];
              where = at;
            }
          }
        const int64_t out = p * 30 + oh * 10 + ow;
        EXPECT_EQ(y[out], best);
        EXPECT_EQ(argmax[out], where) << "plane " << p << " output " << oh << ", " << ow;
      }
  std::vector<float> gy(y.size(), 1.0f);
  std::vector<float> gx(x.size(), 7.0f);
  ops::max_pool2d_backward(gy.data(), argmax.data(), planes, g, gx.data());
  EXPECT_FLOAT_EQ(static_cast<float>(ops::sum(gx.data(), static_cast<int64_t>(gx.size()))),
                  static_cast<float>(y.size()));
  // Ties keep the first position in scan order.
  const std::vector<float> flat(4, 1.0f);
  ops::Conv2dGeometry one{1, 1, 2, 2, 2, 2, 0, 1, 1};
  float out = 0.0f;
  int32_t where = -1;
  ops::max_pool2d_forward(flat.data(), 1, one, &out, &where);
  EXPECT_EQ(where, 0);
}

TEST(Reductions, SumsAndSoftmaxRows) {
  const auto x = random_values(1001, 11);
  double want = 0.0;
  for (float v : x) want += v;
  EXPECT_NEAR(ops::sum(x.data(), 1001), want, 1e-4);
  std::vector<float> cols(7);
  ops::sum_rows(x.data(), cols.data(), 143, 7);
  double first = 0.0;
  for (int64_t r = 0; r < 143; ++r) first += x[r * 7];
  EXPECT_NEAR(cols[0], first, 1e-4);
  std::vector<float> y(14);
  ops::softmax_rows(x.data(), y.data(), 2, 7);
  EXPECT_NEAR(ops::sum(y.data(), 7), 1.0, 1e-6);
  std::vector<float> logy(14);
  ops::log_softmax_rows(x.data(), logy.data(), 2, 7);
  for (int i = 0; i < 14; ++i) EXPECT_NEAR(std::exp(logy[i]), y[i], 1e-6);
}

TEST(Linear, ForwardAndBackwardMatchNaive) {
  const int64_t n = 3, in = 4, out = 2;
  const auto x = random_values(n * in, 12);
  const auto w = random_values(out * in, 13);
  const auto b = random_values(out, 14);
  std::vector<float> y(n * out);
  ops::linear_forward(x.data(), w.data(), b.data(), y.data(), n, in, out);
  auto want = naive_gemm(false, true, n, out, in, x, w);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < out; ++j) want[i * out + j] += b[j];
  expect_near_all(y, want, 1e-5f);
  const auto gy = random_values(n * out, 15);
  std::vector<float> gx(n * in), gw(out * in), gb(out);
  ops::linear_backward(gy.data(), x.data(), w.data(), gx.data(), gw.data(), gb.data(), n, in, out);
  expect_near_all(gx, naive_gemm(false, false, n, in, out, gy, w), 1e-5f);
  expect_near_all(gw, naive_gemm(true, false, out, in, n, gy, x), 1e-5f);
  EXPECT_NEAR(gb[1], gy[1] + gy[3] + gy[5], 1e-6);
}

}  // namespace
}  // namespace dtrain
