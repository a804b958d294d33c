#include "tensor/conv_kernels.h"

#include <algorithm>
#include <bit>
#include <limits>

#include "tensor/intra_op.h"

namespace dtrain::ops {
namespace {

// Short-row primitives. Rows of im2col are a few dozen floats (OW), so the
// per-row overhead matters more than the per-float cost: copies and fills go
// in 8-float blocks with constant-size memcpy (inlined as one vector move),
// and the last block overlaps the previous one instead of a scalar tail.
// (AVX-512 masked tails were tried and were slower on AMD Zen 4.)
constexpr int64_t kBlock = 8;

inline void copy_row(float* dst, const float* src, int64_t n) {
  if (n < kBlock) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    return;
  }
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) __builtin_memcpy(dst + i, src + i, kBlock * sizeof(float));
  if (i < n) __builtin_memcpy(dst + n - kBlock, src + n - kBlock, kBlock * sizeof(float));
}

inline void zero_row(float* dst, int64_t n) {
  if (n < kBlock) {
    for (int64_t i = 0; i < n; ++i) dst[i] = 0.0f;
    return;
  }
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) __builtin_memset(dst + i, 0, kBlock * sizeof(float));
  if (i < n) __builtin_memset(dst + n - kBlock, 0, kBlock * sizeof(float));
}

// dst[i] += src[i]
inline void add_row(float* dst, const float* src, int64_t n) {
  typedef float Block __attribute__((vector_size(kBlock * sizeof(float))));
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    Block x;
    Block y;
    __builtin_memcpy(&x, dst + i, sizeof(x));
    __builtin_memcpy(&y, src + i, sizeof(y));
    x += y;
    __builtin_memcpy(dst + i, &x, sizeof(x));
  }
  for (; i < n; ++i) dst[i] += src[i];
}

// The output columns ow in [lo, hi) whose input column ow*S - P + kw lies in
// [0, W).
void valid_range(int64_t kw, const Conv2dGeometry& g, int64_t* lo, int64_t* hi) {
  // ow*S >= P - kw  and  ow*S <= W - 1 + P - kw
  const int64_t first = g.pad - kw;
  *lo = first <= 0 ? 0 : (first + g.stride - 1) / g.stride;
  const int64_t last = g.w - 1 + g.pad - kw;
  *hi = last < 0 ? 0 : std::min(g.ow, last / g.stride + 1);
  if (*hi < *lo) *hi = *lo;
}

}  // namespace

void im2col(const float* x, const Conv2dGeometry& g, float* col) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const int64_t cols = g.col_cols();
  for (int64_t c = 0; c < g.c; ++c) {
    for (int64_t kh = 0; kh < g.k; ++kh) {
      for (int64_t kw = 0; kw < g.k; ++kw) {
        float* row = col + ((c * g.k + kh) * g.k + kw) * cols;
        int64_t lo = 0;
        int64_t hi = 0;
        valid_range(kw, g, &lo, &hi);
        for (int64_t n = 0; n < g.n; ++n) {
          const float* src_plane = x + (n * g.c + c) * plane;
          float* dst_plane = row + n * out_plane;
          for (int64_t oh = 0; oh < g.oh; ++oh) {
            float* dst = dst_plane + oh * g.ow;
            const int64_t ih = oh * g.stride - g.pad + kh;
            if (ih < 0 || ih >= g.h) {
              zero_row(dst, g.ow);
              continue;
            }
            const float* src = src_plane + ih * g.w - g.pad + kw;
            if (g.stride == 1) {
              zero_row(dst, lo);
              copy_row(dst + lo, src + lo, hi - lo);
              zero_row(dst + hi, g.ow - hi);
            } else {
              for (int64_t ow = 0; ow < lo; ++ow) dst[ow] = 0.0f;
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * g.stride];
              for (int64_t ow = hi; ow < g.ow; ++ow) dst[ow] = 0.0f;
            }
          }
        }
      }
    }
  }
}

void col2im(const float* col, const Conv2dGeometry& g, float* gx) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const int64_t cols = g.col_cols();
  for (int64_t i = 0; i < g.n * g.c * plane; ++i) gx[i] = 0.0f;
  for (int64_t c = 0; c < g.c; ++c) {
    for (int64_t kh = 0; kh < g.k; ++kh) {
      for (int64_t kw = 0; kw < g.k; ++kw) {
        const float* row = col + ((c * g.k + kh) * g.k + kw) * cols;
        int64_t lo = 0;
        int64_t hi = 0;
        valid_range(kw, g, &lo, &hi);
        for (int64_t n = 0; n < g.n; ++n) {
          float* dst_plane = gx + (n * g.c + c) * plane;
          const float* src_plane = row + n * out_plane;
          for (int64_t oh = 0; oh < g.oh; ++oh) {
            const int64_t ih = oh * g.stride - g.pad + kh;
            if (ih < 0 || ih >= g.h) continue;
            const float* src = src_plane + oh * g.ow;
            float* dst = dst_plane + ih * g.w - g.pad + kw;
            if (g.stride == 1) {
              add_row(dst + lo, src + lo, hi - lo);
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.stride] += src[ow];
            }
          }
        }
      }
    }
  }
}

namespace {

typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

// Eight outputs of the 2x2, stride 2 window from input rows r0 and r1 (16
// floats read from each), the window of lane j starting at column 2j; `top`
// is r0's offset in its plane. The even and odd columns are split with
// shuffles, and winner and index come from vector compares and selects (no
// branches, whose data-dependent outcome mispredicts). Ties keep the first
// position in scan order, as the generic path does. With after_relu, a
// maximum not above zero outputs 0 with index -1 (relu_after_max_pool).
inline void max_pool2x2_eight(const float* r0, const float* r1, int32_t top, int32_t w,
                              bool after_relu, float* y, int32_t* argmax) {
  const I8 lane = {0, 2, 4, 6, 8, 10, 12, 14};
  F8 a0, b0, a1, b1;
  __builtin_memcpy(&a0, r0, sizeof(F8));
  __builtin_memcpy(&b0, r0 + 8, sizeof(F8));
  __builtin_memcpy(&a1, r1, sizeof(F8));
  __builtin_memcpy(&b1, r1 + 8, sizeof(F8));
  const F8 even0 = __builtin_shufflevector(a0, b0, 0, 2, 4, 6, 8, 10, 12, 14);
  const F8 odd0 = __builtin_shufflevector(a0, b0, 1, 3, 5, 7, 9, 11, 13, 15);
  const F8 even1 = __builtin_shufflevector(a1, b1, 0, 2, 4, 6, 8, 10, 12, 14);
  const F8 odd1 = __builtin_shufflevector(a1, b1, 1, 3, 5, 7, 9, 11, 13, 15);
  const I8 right0 = odd0 > even0;  // -1 where the right column wins
  const I8 right1 = odd1 > even1;
  const F8 best0 = right0 ? odd0 : even0;
  const F8 best1 = right1 ? odd1 : even1;
  const I8 lower = best1 > best0;
  F8 best = lower ? best1 : best0;
  const I8 base = top + lane;
  I8 where = lower ? base + w - right1 : base - right0;
  if (after_relu) {
    const I8 live = best > F8{};
    best = live ? best : F8{};
    where = (where & live) | ~live;
  }
  __builtin_memcpy(y, &best, sizeof(F8));
  __builtin_memcpy(argmax, &where, sizeof(I8));
}

// One output of the same window, for the edges the vector path cannot reach.
inline void max_pool2x2_one(const float* r0, const float* r1, int32_t top, int32_t w,
                            bool after_relu, float* y, int32_t* argmax) {
  const int32_t right0 = r0[1] > r0[0];
  const int32_t right1 = r1[1] > r1[0];
  const float best0 = std::max(r0[0], r0[1]);
  const float best1 = std::max(r1[0], r1[1]);
  const bool lower = best1 > best0;
  const float best = std::max(best0, best1);
  const bool dead = after_relu && !(best > 0.0f);
  *y = dead ? 0.0f : best;
  *argmax = dead ? -1 : top + (lower ? w + right1 : right0);
}

// The common 2x2, stride 2, unpadded window, eight outputs at a time. Rows of
// at least eight outputs go in blocks of eight, a partial last block
// overlapping the previous one. Narrower rows (LeNet-5's second pooling: 5
// outputs) run eight outputs from the row's start too: the lanes past the
// row read on into the next input rows and write the next outputs, which
// the next row then overwrites, so a row takes that path only while its 16
// + 16 floats of input and 8 outputs lie inside this call's planes.
void max_pool2x2_forward(const float* x, int64_t planes, const Conv2dGeometry& g, bool after_relu,
                         float* y, int32_t* argmax) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const auto w = static_cast<int32_t>(g.w);
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x + p * plane;
    float* yp = y + p * out_plane;
    int32_t* ap = argmax + p * out_plane;
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      const auto top = static_cast<int32_t>(2 * oh * g.w);
      const float* r0 = xp + top;
      const float* r1 = r0 + g.w;
      float* yrow = yp + oh * g.ow;
      int32_t* arow = ap + oh * g.ow;
      if (g.ow >= 8) {
        for (int64_t block = 0; block < g.ow; block += 8) {
          const int64_t start = std::min(block, g.ow - 8);
          const auto c = static_cast<int32_t>(2 * start);
          max_pool2x2_eight(r0 + c, r1 + c, top + c, w, after_relu, yrow + start, arow + start);
        }
        continue;
      }
      const bool inside = (p * plane + top + g.w + 16 <= planes * plane) &&
                          (p * out_plane + oh * g.ow + 8 <= planes * out_plane);
      if (inside) {
        max_pool2x2_eight(r0, r1, top, w, after_relu, yrow, arow);
        continue;
      }
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const auto c = static_cast<int32_t>(2 * ow);
        max_pool2x2_one(r0 + c, r1 + c, top + c, w, after_relu, yrow + ow, arow + ow);
      }
    }
  }
}

// The backward of the 2x2, stride 2 window when the windows tile the plane
// (H = 2*OH, W = 2*OW): every input belongs to one window, so each window's
// four gradients are written outright (the routed one, zeros elsewhere)
// with no zero fill and no scatter. 0.0f + g, as the scatter into a zeroed
// plane computes it, keeps the result bit-identical to that path (-0.0f
// becomes +0.0f).
void max_pool2x2_backward_tiled(const float* gy, const int32_t* argmax, int64_t planes,
                                const Conv2dGeometry& g, float* gx) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const auto w = static_cast<int32_t>(g.w);
  const I8 lane = {0, 2, 4, 6, 8, 10, 12, 14};
  for (int64_t p = 0; p < planes; ++p) {
    float* gp = gx + p * plane;
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      const auto top = static_cast<int32_t>(2 * oh * g.w);
      const float* grow = gy + p * out_plane + oh * g.ow;
      const int32_t* arow = argmax + p * out_plane + oh * g.ow;
      float* x0 = gp + top;
      float* x1 = x0 + g.w;
      const int64_t vector_outputs = g.ow >= 8 ? g.ow : 0;
      for (int64_t block = 0; block < vector_outputs; block += 8) {
        const int64_t start = std::min(block, g.ow - 8);
        F8 gv;
        I8 av;
        __builtin_memcpy(&gv, grow + start, sizeof(F8));
        __builtin_memcpy(&av, arow + start, sizeof(I8));
        const I8 d = av - (top + 2 * static_cast<int32_t>(start) + lane);
        const F8 e0 = (d == 0 ? gv : F8{}) + 0.0f;
        const F8 e1 = (d == 1 ? gv : F8{}) + 0.0f;
        const F8 e2 = (d == w ? gv : F8{}) + 0.0f;
        const F8 e3 = (d == w + 1 ? gv : F8{}) + 0.0f;
        const F8 t0 = __builtin_shufflevector(e0, e1, 0, 8, 1, 9, 2, 10, 3, 11);
        const F8 t1 = __builtin_shufflevector(e0, e1, 4, 12, 5, 13, 6, 14, 7, 15);
        const F8 u0 = __builtin_shufflevector(e2, e3, 0, 8, 1, 9, 2, 10, 3, 11);
        const F8 u1 = __builtin_shufflevector(e2, e3, 4, 12, 5, 13, 6, 14, 7, 15);
        __builtin_memcpy(x0 + 2 * start, &t0, sizeof(F8));
        __builtin_memcpy(x0 + 2 * start + 8, &t1, sizeof(F8));
        __builtin_memcpy(x1 + 2 * start, &u0, sizeof(F8));
        __builtin_memcpy(x1 + 2 * start + 8, &u1, sizeof(F8));
      }
      for (int64_t ow = vector_outputs; ow < g.ow; ++ow) {
        const auto c = static_cast<int32_t>(2 * ow);
        const int32_t d = arow[ow] - (top + c);
        const float v = grow[ow];
        x0[c] = (d == 0 ? v : 0.0f) + 0.0f;
        x0[c + 1] = (d == 1 ? v : 0.0f) + 0.0f;
        x1[c] = (d == w ? v : 0.0f) + 0.0f;
        x1[c + 1] = (d == w + 1 ? v : 0.0f) + 0.0f;
      }
    }
  }
}

void max_pool2d_forward_serial(const float* x, int64_t planes, const Conv2dGeometry& g,
                               bool after_relu, float* y, int32_t* argmax) {
  if (g.k == 2 && g.stride == 2 && g.pad == 0) {
    max_pool2x2_forward(x, planes, g, after_relu, y, argmax);
    return;
  }
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x + p * plane;
    float* yp = y + p * out_plane;
    int32_t* ap = argmax + p * out_plane;
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      const int64_t h0 = std::max<int64_t>(oh * g.stride - g.pad, 0);
      const int64_t h1 = std::min(oh * g.stride - g.pad + g.k, g.h);
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const int64_t w0 = std::max<int64_t>(ow * g.stride - g.pad, 0);
        const int64_t w1 = std::min(ow * g.stride - g.pad + g.k, g.w);
        float best = -std::numeric_limits<float>::infinity();
        int64_t where = h0 * g.w + w0;
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) {
            const float v = xp[ih * g.w + iw];
            if (v > best) {
              best = v;
              where = ih * g.w + iw;
            }
          }
        }
        yp[oh * g.ow + ow] = best;
        ap[oh * g.ow + ow] = static_cast<int32_t>(where);
      }
    }
  }
  if (after_relu) relu_after_max_pool(y, argmax, planes * out_plane);
}

void max_pool2d_backward_serial(const float* gy, const int32_t* argmax, int64_t planes,
                                const Conv2dGeometry& g, float* gx) {
  if (g.k == 2 && g.stride == 2 && g.pad == 0 && g.h == 2 * g.oh && g.w == 2 * g.ow && g.ow >= 8) {
    max_pool2x2_backward_tiled(gy, argmax, planes, g, gx);
    return;
  }
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  // Plane by plane, so that the scatter finds its zeroed plane in cache.
  for (int64_t p = 0; p < planes; ++p) {
    float* gp = gx + p * plane;
    const float* gyp = gy + p * out_plane;
    const int32_t* ap = argmax + p * out_plane;
    std::fill_n(gp, plane, 0.0f);
    // Without a branch: after a ReLU about half the windows are dead
    // (argmax -1), at random, and a branch mispredicted on each (measured:
    // the scatter ran 1.8x slower). A dead window adds +0.0f to the plane's
    // first element instead.
    for (int64_t i = 0; i < out_plane; ++i) {
      const int32_t live = ~(ap[i] >> 31);  // all ones when ap[i] >= 0, else 0
      const uint32_t g = std::bit_cast<uint32_t>(gyp[i]) & static_cast<uint32_t>(live);
      gp[ap[i] & live] += std::bit_cast<float>(g);
    }
  }
}

}  // namespace

// Planes split over the intra-op threads: each plane's output depends on
// that plane alone, so the result is bit-identical to one thread.
void max_pool2d_forward(const float* x, int64_t planes, const Conv2dGeometry& g, float* y,
                        int32_t* argmax, bool after_relu) {
  const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
  tensor::parallel_for_range(planes, [&](int64_t begin, int64_t end, int) {
    max_pool2d_forward_serial(x + begin * plane, end - begin, g, after_relu, y + begin * out_plane,
                              argmax + begin * out_plane);
  });
}

void max_pool2d_backward(const float* gy, const int32_t* argmax, int64_t planes,
                         const Conv2dGeometry& g, float* gx) {
  const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
  tensor::parallel_for_range(planes, [&](int64_t begin, int64_t end, int) {
    max_pool2d_backward_serial(gy + begin * out_plane, argmax + begin * out_plane, end - begin, g,
                               gx + begin * plane);
  });
}

void relu_after_max_pool(float* y, int32_t* argmax, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const bool dead = !(y[i] > 0.0f);
    y[i] = dead ? 0.0f : y[i];
    argmax[i] = dead ? -1 : argmax[i];
  }
}

void avg_pool2d_forward(const float* x, int64_t planes, const Conv2dGeometry& g, float* y) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const float inv = 1.0f / static_cast<float>(g.k * g.k);
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x + p * plane;
    float* yp = y + p * out_plane;
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      const int64_t h0 = std::max<int64_t>(oh * g.stride - g.pad, 0);
      const int64_t h1 = std::min(oh * g.stride - g.pad + g.k, g.h);
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const int64_t w0 = std::max<int64_t>(ow * g.stride - g.pad, 0);
        const int64_t w1 = std::min(ow * g.stride - g.pad + g.k, g.w);
        float total = 0.0f;
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) total += xp[ih * g.w + iw];
        }
        yp[oh * g.ow + ow] = total * inv;
      }
    }
  }
}

void avg_pool2d_backward(const float* gy, int64_t planes, const Conv2dGeometry& g, float* gx) {
  const int64_t plane = g.h * g.w;
  const int64_t out_plane = g.oh * g.ow;
  const float inv = 1.0f / static_cast<float>(g.k * g.k);
  std::fill_n(gx, planes * plane, 0.0f);
  for (int64_t p = 0; p < planes; ++p) {
    float* gp = gx + p * plane;
    const float* gyp = gy + p * out_plane;
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      const int64_t h0 = std::max<int64_t>(oh * g.stride - g.pad, 0);
      const int64_t h1 = std::min(oh * g.stride - g.pad + g.k, g.h);
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const int64_t w0 = std::max<int64_t>(ow * g.stride - g.pad, 0);
        const int64_t w1 = std::min(ow * g.stride - g.pad + g.k, g.w);
        const float share = gyp[oh * g.ow + ow] * inv;
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) gp[ih * g.w + iw] += share;
        }
      }
    }
  }
}

}  // namespace dtrain::ops
