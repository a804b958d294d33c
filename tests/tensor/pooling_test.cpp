// Max pooling's fast paths against a naive reference, bit for bit: the 2x2
// window's vector path on wide rows, on narrow rows (fewer than eight
// outputs, where a row's lanes run on into the next rows), at the last row
// of the last plane (scalar), on planes the windows do not tile (odd sizes);
// the ReLU fused into the forward pass; the backward that writes whole
// windows against routing into a zeroed plane. Inputs hold ties, negative
// maxima (the ReLU kills them) and -0.0f gradients.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "tensor/conv_kernels.h"

namespace dtrain {
namespace {

struct Pooled {
  std::vector<float> y;
  std::vector<int32_t> argmax;
};

// The first position in scan order wins ties; with after_relu a maximum not
// above zero gives 0 and index -1.
Pooled naive_max_pool(const std::vector<float>& x, int64_t planes, const ops::Conv2dGeometry& g,
                      bool after_relu) {
  Pooled r{std::vector<float>(static_cast<size_t>(planes * g.oh * g.ow)),
           std::vector<int32_t>(static_cast<size_t>(planes * g.oh * g.ow))};
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < g.oh; ++oh)
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        float best = -INFINITY;
        int64_t where = -1;
        for (int64_t i = 0; i < g.k; ++i)
          for (int64_t j = 0; j < g.k; ++j) {
            const int64_t at = (oh * g.stride + i) * g.w + ow * g.stride + j;
            if (x[p * g.h * g.w + at] > best) {
              best = x[p * g.h * g.w + at];
              where = at;
            }
          }
        if (after_relu && !(best > 0.0f)) {
          best = 0.0f;
          where = -1;
        }
        const int64_t out = (p * g.oh + oh) * g.ow + ow;
        r.y[out] = best;
        r.argmax[out] = static_cast<int32_t>(where);
      }
  return r;
}

std::vector<float> naive_max_pool_backward(const std::vector<float>& gy,
                                           const std::vector<int32_t>& argmax, int64_t planes,
                                           const ops::Conv2dGeometry& g) {
  std::vector<float> gx(static_cast<size_t>(planes * g.h * g.w), 0.0f);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < g.oh * g.ow; ++i) {
      const int32_t at = argmax[p * g.oh * g.ow + i];
      if (at >= 0) gx[p * g.h * g.w + at] += gy[p * g.oh * g.ow + i];
    }
  return gx;
}

template <typename T>
void expect_bits_equal(const std::vector<T>& got, const std::vector<T>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if constexpr (std::is_same_v<T, float>) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "element " << i << ": " << got[i] << " against " << want[i];
    } else {
      ASSERT_EQ(got[i], want[i]) << "element " << i;
    }
  }
}

TEST(MaxPool2x2, FastPathsMatchNaiveReferenceBitForBit) {
  struct Case {
    int64_t planes, h, w;
  };
  // 28x28: wide rows (14 outputs: a block and an overlapping one), tiled;
  // 10x10: LeNet-5's second pooling, five outputs a row; 5x7 and 3x3: odd
  // sizes, narrow, not tiled; 2x2: one output a plane; 6x21: wide, not tiled.
  for (const Case& t : {Case{3, 28, 28}, Case{4, 10, 10}, Case{1, 10, 10}, Case{3, 5, 7},
                        Case{5, 3, 3}, Case{7, 2, 2}, Case{2, 6, 21}}) {
    const ops::Conv2dGeometry g{1, 1, t.h, t.w, 2, 2, 0, t.h / 2, t.w / 2};
    Rng rng(static_cast<uint64_t>(t.h * 100 + t.w));
    std::vector<float> x(static_cast<size_t>(t.planes * t.h * t.w));
    // Values on a coarse grid, so that windows hold ties and all-negative
    // maxima.
    for (float& v : x) v = std::round(rng.uniform(-3.0f, 3.0f));
    std::vector<float> gy(static_cast<size_t>(t.planes * g.oh * g.ow));
    for (size_t i = 0; i < gy.size(); ++i) gy[i] = i % 5 == 0 ? -0.0f : rng.uniform(-1.0f, 1.0f);
    for (bool after_relu : {false, true}) {
      SCOPED_TRACE(::testing::Message() << t.planes << " planes of " << t.h << "x" << t.w
                                        << (after_relu ? ", after ReLU" : ""));
      const Pooled want = naive_max_pool(x, t.planes, g, after_relu);
      Pooled got{std::vector<float>(want.y.size(), NAN),
                 std::vector<int32_t>(want.argmax.size(), 12345)};
      ops::max_pool2d_forward(x.data(), t.planes, g, got.y.data(), got.argmax.data(), after_relu);
      expect_bits_equal(got.y, want.y);
      expect_bits_equal(got.argmax, want.argmax);
      std::vector<float> gx(x.size(), NAN);
      ops::max_pool2d_backward(gy.data(), got.argmax.data(), t.planes, g, gx.data());
      expect_bits_equal(gx, naive_max_pool_backward(gy, want.argmax, t.planes, g));
    }
  }
}

}  // namespace
}  // namespace dtrain
