// Convolution and pooling kernels on NCHW float arrays.
//
// Shape legend: N batch, C channels, H/W input height/width, K square kernel
// size, S stride, P zero padding, OH/OW output height/width with
// OH = (H + 2P - K) / S + 1. A "plane" is one [H, W] slice of one (n, c).
//
// im2col: col is [C*K*K, N*OH*OW] with row (c, kh, kw) and column
// (n, oh, ow), so a GEMM with a [O, C*K*K] weight gives the convolution; with
// N = 1 (one sample) its result [O, OH*OW] is that sample's NCHW output.
// Contract: pointers address the sizes the legend implies; no allocation, no
// exceptions, no global state. Thread safety: reentrant.
#pragma once

#include <cstdint>

namespace dtrain::ops {

struct Conv2dGeometry {
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t k = 0, stride = 1, pad = 0;
  int64_t oh = 0, ow = 0;

  int64_t col_rows() const { return c * k * k; }
  int64_t col_cols() const { return n * oh * ow; }
};

// x [N, C, H, W] -> col [C*K*K, N*OH*OW] (padding reads as zero).
void im2col(const float* x, const Conv2dGeometry& g, float* col);
// The adjoint: gx [N, C, H, W] = sum of col entries over their source pixels
// (gx is overwritten).
void col2im(const float* col, const Conv2dGeometry& g, float* gx);

// Pooling over `planes` = N*C planes of [H, W] into [OH, OW] using the
// geometry's k/stride/pad (its n and c are ignored).
// Max: padded positions never win; argmax records the winning input offset
// within its plane for the backward pass. With after_relu the output is
// that of max pooling after a ReLU, in the same pass (relu_after_max_pool).
// Max forward and backward split the planes over tensor::intra_op_threads()
// (tensor/intra_op.h), bit-identical to one thread; they return when every
// part has finished.
void max_pool2d_forward(const float* x, int64_t planes, const Conv2dGeometry& g, float* y,
                        int32_t* argmax, bool after_relu = false);
// Turns max pooling's output into that of max pooling after a ReLU
// (max(relu(x)) = relu(max(x))): each of the n outputs at or below zero
// becomes 0 and its argmax -1, so that backward routes nothing there, as
// the ReLU's mask would have. Bit-identical to ReLU then max pooling.
void relu_after_max_pool(float* y, int32_t* argmax, int64_t n);
// gx (overwritten) gets gy routed to the recorded positions (none for a
// negative argmax).
void max_pool2d_backward(const float* gy, const int32_t* argmax, int64_t planes,
                         const Conv2dGeometry& g, float* gx);
// Average over K*K positions, padding counted as zeros (torch's default
// count_include_pad=True).
void avg_pool2d_forward(const float* x, int64_t planes, const Conv2dGeometry& g, float* y);
void avg_pool2d_backward(const float* gy, int64_t planes, const Conv2dGeometry& g, float* gx);

}  // namespace dtrain::ops
