// conv2d, max_pool2d and avg_pool2d: forward beside backward.
//
// Shape legend: N batch, C input channels, O output channels, H/W input
// size, K kernel, S stride, P padding, OH/OW output size, Q = OH*OW output
// pixels, R = C*K*K rows of the unfolded input.
//
// conv2d with stride 1 runs as an implicit GEMM over the padded input
// (tensor/conv_implicit.h: nothing unfolded, the weight gradient from the
// kept padded input); other strides unfold one sample at a time:
//   forward   col [R, Q]   = im2col(x_n)
//             y_n [O, Q]   = W [O, R] . col (+ bias per row)
//   backward  gW [O, R]   += gy_n [O, Q] . col^T        (col saved by forward)
//             gb [O]      += row sums of gy_n
//             gx_n         = col2im(W^T . gy_n)
// Skinny products (R small, as in a first layer on one channel) go to the
// register-blocked kernels of tensor/small_gemm.h, the rest to BLAS; the
// choice was measured on LeNet-5 shapes (see conv_gemm_* below).
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "core/error.h"
#include "tensor/blas.h"
#include "tensor/conv_implicit.h"
#include "tensor/conv_kernels.h"
#include "tensor/ops.h"
#include "tensor/small_gemm.h"

namespace dtrain {

using autograd::InputGrad;
using autograd::needs_graph;
using autograd::record;

namespace {

int64_t output_extent(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
  const int64_t span = in + 2 * padding - kernel;
  return span < 0 ? 0 : span / stride + 1;
}

ops::Conv2dGeometry pool_geometry(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding,
                                  const char* what) {
  if (x.dim() != 4) {
    throw UsageError(fmt::format("{}: input {} is not [N, C, H, W]", what, shape_str(x.shape())));
  }
  if (kernel < 1 || stride < 1 || padding < 0 || 2 * padding > kernel) {
    throw UsageError(fmt::format(
        "{}: kernel {}, stride {}, padding {} are invalid (need kernel >= 1, stride >= 1, "
        "0 <= padding <= kernel / 2)",
        what, kernel, stride, padding));
  }
  ops::Conv2dGeometry g;
  g.n = x.size(0);
  g.c = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.k = kernel;
  g.stride = stride;
  g.pad = padding;
  g.oh = output_extent(g.h, kernel, stride, padding);
  g.ow = output_extent(g.w, kernel, stride, padding);
  if (g.oh == 0 || g.ow == 0) {
    throw UsageError(fmt::format("{}: input {} is smaller than kernel {} with padding {}", what,
                                 shape_str(x.shape()), kernel, padding));
  }
  return g;
}

// y [O, Q] (+)= w [O, R] . col [R, Q]. The register-blocked kernel wins
// while R is small (LeNet-5 conv1: R = 25, 2x faster than BLAS; at R = 150
// they tie).
void conv_gemm_forward(int64_t o, int64_t r, int64_t q, const float* w, const float* col, float* y,
                       bool accumulate) {
  if (r <= 64 && o <= 32) {
    ops::gemm_small_m(o, r, q, w, r, col, q, y, q, accumulate);
  } else {
    blas::sgemm(false, false, o, q, r, 1.0f, w, r, col, q, accumulate ? 1.0f : 0.0f, y, q);
  }
}

// gw [O, R] (+)= gy [O, Q] . col^T: dot products over Q pixels. The blocked
// kernel wins while O x R is small (conv1: 2.5x faster than BLAS); BLAS
// wins at O x R = 16 x 150.
void conv_gemm_weight(int64_t o, int64_t r, int64_t q, const float* gy, const float* col, float* gw,
                      bool accumulate) {
  if (r <= 64 && o <= 32) {
    ops::gemm_long_k(o, r, q, gy, q, col, q, gw, r, accumulate);
  } else {
    blas::sgemm(false, true, o, r, q, 1.0f, gy, q, col, q, accumulate ? 1.0f : 0.0f, gw, r);
  }
}

}  // namespace

namespace {

// gx [N, C, H, W] = col2im(W^T . gy_n) sample by sample.
void conv_input_grad(const Tensor& gy, const Tensor& w, const ops::Conv2dGeometry& one,
                     int64_t batch, int64_t out_channels, float* gx) {
  const int64_t rows = one.col_rows();
  const int64_t plane = one.oh * one.ow;
  Tensor dcol = Tensor::empty({rows, plane});
  for (int64_t n = 0; n < batch; ++n) {
    blas::sgemm(true, false, rows, plane, out_channels, 1.0f, w.data(), rows,
                gy.data() + n * out_channels * plane, plane, 0.0f, dcol.data(), plane);
    ops::col2im(dcol.data(), one, gx + n * one.c * one.h * one.w);
  }
}

// Stride 1: implicit GEMM over the padded input (tensor/conv_implicit.h),
// which backward keeps for the weight gradient in place of the columns.
Variable conv2d_implicit(const Variable& x, const Variable& weight, const Variable& bias,
                         const ops::Conv2dGeometry& g) {
  const Tensor& w = weight.data();
  const int64_t out_channels = w.size(0);
  const ops::ImplicitConv conv(g);
  Tensor xpad = Tensor::empty({conv.padded_floats()});
  conv.pad_input(x.data().data(), xpad.data());
  Tensor scratch = Tensor::empty({conv.scratch_floats(out_channels)});
  Tensor y = Tensor::empty({g.n, out_channels, g.oh, g.ow});
  conv.forward(xpad.data(), w.data(), out_channels, bias.defined() ? bias.data().data() : nullptr,
               y.data(), scratch.data());
  if (!needs_graph({&x, &weight, &bias})) return Variable(std::move(y));
  if (!weight.requires_grad()) xpad = Tensor();
  return record("conv2d", {&x, &weight, &bias}, std::move(y),
                [in_shape = x.data().shape(), w, xpad, conv, out_channels](
                    const Tensor& gy, std::span<InputGrad> grads) {
                  Tensor gw = grads[1].needed ? Tensor::empty(w.shape()) : Tensor();
                  Tensor gb = grads[2].needed ? Tensor::empty({out_channels}) : Tensor();
                  if (gw.defined() || gb.defined()) {
                    Tensor scratch = Tensor::empty({conv.weight_grad_scratch_floats(out_channels)});
                    conv.weight_grad(xpad.defined() ? xpad.data() : nullptr, gy.data(),
                                     out_channels, gw.defined() ? gw.data() : nullptr,
                                     gb.defined() ? gb.data() : nullptr, scratch.data());
                  }
                  if (grads[0].needed) {
                    Tensor gx = Tensor::empty(in_shape);
                    Tensor scratch = Tensor::empty({conv.input_grad_scratch_floats(out_channels)});
                    conv.input_grad(gy.data(), w.data(), out_channels, gx.data(), scratch.data());
                    grads[0].set(std::move(gx));
                  }
                  if (gw.defined()) grads[1].set(std::move(gw));
                  if (gb.defined()) grads[2].set(std::move(gb));
                });
}

// Any stride: im2col one sample at a time (the unfolded sample stays in
// cache, and every sample's output [O, Q] is already contiguous in NCHW).
Variable conv2d_unfolded(const Variable& x, const Variable& weight, const Variable& bias,
                         const ops::Conv2dGeometry& g) {
  const Tensor& in = x.data();
  const Tensor& w = weight.data();
  const int64_t out_channels = w.size(0);
  const int64_t rows = g.col_rows();
  const int64_t plane = g.oh * g.ow;
  const int64_t in_sample = g.c * g.h * g.w;
  const int64_t out_sample = out_channels * plane;
  ops::Conv2dGeometry one = g;  // the geometry of a single sample
  one.n = 1;

  // The unfolded samples are kept for the weight gradient when one will be
  // needed (as THNN's slow_conv2d keeps its finput): recomputing them in
  // backward cost more than the GEMMs of a LeNet-5 step.
  const bool recording = needs_graph({&x, &weight, &bias});
  const bool keep_cols = recording && weight.requires_grad();
  Tensor cols = Tensor::empty({keep_cols ? g.n : 1, rows, plane});
  Tensor y = Tensor::empty({g.n, out_channels, g.oh, g.ow});
  const float* bias_data = bias.defined() ? bias.data().data() : nullptr;
  for (int64_t n = 0; n < g.n; ++n) {
    float* col = cols.data() + (keep_cols ? n * rows * plane : 0);
    ops::im2col(in.data() + n * in_sample, one, col);
    float* yn = y.data() + n * out_sample;
    if (bias_data != nullptr) {
      for (int64_t o = 0; o < out_channels; ++o) std::fill_n(yn + o * plane, plane, bias_data[o]);
    }
    conv_gemm_forward(out_channels, rows, plane, w.data(), col, yn, bias_data != nullptr);
  }
  if (!recording) return Variable(std::move(y));
  if (!keep_cols) cols = Tensor();
  return record("conv2d", {&x, &weight, &bias}, std::move(y),
                [in_shape = in.shape(), w, cols, one, batch = g.n, out_channels, rows, plane,
                 out_sample](const Tensor& gy, std::span<InputGrad> grads) {
                  if (grads[1].needed) {
                    Tensor gw = Tensor::empty(w.shape());
                    if (batch == 0) gw.zero();
                    for (int64_t n = 0; n < batch; ++n) {
                      conv_gemm_weight(out_channels, rows, plane, gy.data() + n * out_sample,
                                       cols.data() + n * rows * plane, gw.data(), n > 0);
                    }
                    grads[1].set(std::move(gw));
                  }
                  if (grads[0].needed) {
                    Tensor gx = Tensor::empty(in_shape);
                    conv_input_grad(gy, w, one, batch, out_channels, gx.data());
                    grads[0].set(std::move(gx));
                  }
                  if (grads[2].needed) {
                    Tensor gb = Tensor::zeros({out_channels});
                    for (int64_t n = 0; n < batch; ++n) {
                      for (int64_t o = 0; o < out_channels; ++o) {
                        gb.data()[o] += static_cast<float>(
                            ops::sum(gy.data() + n * out_sample + o * plane, plane));
                      }
                    }
                    grads[2].set(std::move(gb));
                  }
                });
}

}  // namespace

Variable conv2d(const Variable& x, const Variable& weight, const Variable& bias, int64_t stride,
                int64_t padding) {
  if (!x.defined() || !weight.defined()) throw UsageError("conv2d: input or weight is undefined");
  const Tensor& in = x.data();
  const Tensor& w = weight.data();
  if (in.dim() != 4 || w.dim() != 4 || w.size(1) != in.size(1) || w.size(2) != w.size(3)) {
    throw UsageError(
        fmt::format("conv2d: input {} does not match weight {} (need [N, C, H, W] "
                    "and [O, C, K, K])",
                    shape_str(in.shape()), shape_str(w.shape())));
  }
  const int64_t out_channels = w.size(0);
  if (bias.defined() && bias.data().shape() != Shape{out_channels}) {
    throw UsageError(fmt::format("conv2d: bias {} does not match weight {} (expected ({},))",
                                 shape_str(bias.data().shape()), shape_str(w.shape()),
                                 out_channels));
  }
  if (stride < 1 || padding < 0) {
    throw UsageError(fmt::format("conv2d: stride {} and padding {} are invalid", stride, padding));
  }
  ops::Conv2dGeometry g;
  g.n = in.size(0);
  g.c = in.size(1);
  g.h = in.size(2);
  g.w = in.size(3);
  g.k = w.size(2);
  g.stride = stride;
  g.pad = padding;
  g.oh = output_extent(g.h, g.k, stride, padding);
  g.ow = output_extent(g.w, g.k, stride, padding);
  if (g.oh == 0 || g.ow == 0) {
    throw UsageError(fmt::format("conv2d: input {} is smaller than weight {} with padding {}",
                                 shape_str(in.shape()), shape_str(w.shape()), padding));
  }
  return stride == 1 ? conv2d_implicit(x, weight, bias, g) : conv2d_unfolded(x, weight, bias, g);
}

namespace {

// std::allocator, except that a vector's value-initialised ints are left
// uninitialised (placement default-initialisation): for buffers a kernel
// writes in full. The pooling argmax zeroed by std::vector took ~1% of a
// two-thread LeNet-5 step's CPU time, on the calling thread alone.
template <typename T>
struct OverwriteAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = OverwriteAllocator<U>;
  };
  OverwriteAllocator() = default;
  template <typename U>
  explicit OverwriteAllocator(const OverwriteAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    std::construct_at(p, std::forward<Args>(args)...);
  }
};

// x [N, C, H, W] -> y [N, C, OH, OW]; the argmax of each window is saved
// and the backward pass routes gy there. With `after_relu`, y = max(relu(x))
// in the same pass: windows whose maximum is not positive output 0 and route
// no gradient (argmax -1), which is what a ReLU's mask would do.
Variable max_pool2d_impl(const Variable& x, int64_t kernel, int64_t stride, int64_t padding,
                         bool after_relu, const char* what) {
  if (!x.defined()) throw UsageError(fmt::format("{}: the input is undefined", what));
  const ops::Conv2dGeometry g = pool_geometry(x.data(), kernel, stride, padding, what);
  const int64_t planes = g.n * g.c;
  Tensor y = Tensor::empty({g.n, g.c, g.oh, g.ow});
  std::vector<int32_t, OverwriteAllocator<int32_t>> argmax(static_cast<size_t>(y.numel()));
  ops::max_pool2d_forward(x.data().data(), planes, g, y.data(), argmax.data(), after_relu);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record(
      what, {&x}, std::move(y),
      [g, planes, argmax = std::move(argmax)](const Tensor& gy, std::span<InputGrad> grads) {
        Tensor gx = Tensor::empty({g.n, g.c, g.h, g.w});
        ops::max_pool2d_backward(gy.data(), argmax.data(), planes, g, gx.data());
        grads[0].set(std::move(gx));
      });
}

}  // namespace

Variable max_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding) {
  return max_pool2d_impl(x, kernel, stride, padding, false, "max_pool2d");
}

Variable relu_max_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding) {
  return max_pool2d_impl(x, kernel, stride, padding, true, "relu_max_pool2d");
}

// x [N, C, H, W] -> y [N, C, OH, OW]; each gy spreads evenly over its window.
Variable avg_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding) {
  if (!x.defined()) throw UsageError("avg_pool2d: the input is undefined");
  const ops::Conv2dGeometry g = pool_geometry(x.data(), kernel, stride, padding, "avg_pool2d");
  const int64_t planes = g.n * g.c;
  Tensor y = Tensor::empty({g.n, g.c, g.oh, g.ow});
  ops::avg_pool2d_forward(x.data().data(), planes, g, y.data());
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("avg_pool2d", {&x}, std::move(y),
                [g, planes](const Tensor& gy, std::span<InputGrad> grads) {
                  Tensor gx = Tensor::empty({g.n, g.c, g.h, g.w});
                  ops::avg_pool2d_backward(gy.data(), planes, g, gx.data());
                  grads[0].set(std::move(gx));
                });
}

}  // namespace dtrain
