// Stride-1 convolution as an implicit GEMM (the convolution-as-GEMM of
// Chetlur et al. 2014, "cuDNN: Efficient Primitives for Deep Learning",
// without materialising the unfolded matrix): the unfolded input is never
// written. With the input zero-padded into planes [Hp, Wp] = [H + 2P, W + 2P],
// row (c, kh, kw) of the unfolded sample, read over the output grid q = oh *
// Wp + ow, is the padded sample itself shifted by c*Hp*Wp + kh*Wp + kw. So
// the GEMM's B operand is R = C*K*K shifted views of one small buffer (a few
// KiB per sample, in L1), not an [R, OH*OW] matrix (LeNet-5's conv1 unfolds
// each 3 KiB sample into 78 KiB).
//
// Shape legend: N batch, C input channels, O output channels, H/W input,
// K kernel, P padding, OH/OW output (= H + 2P - K + 1), Hp/Wp padded input,
// R = C*K*K, G = grid: OH * Wp output positions per sample rounded up to a
// whole vector of the register-blocked kernels (tensor/small_gemm.h). The
// positions with ow >= OW, and those past OH * Wp, wrap into the next row or
// sample: they are computed and discarded (Wp - OW of every Wp columns).
//
//   forward       Y_n [O, G]   = W [O, R] . shifted(xpad_n) [R, G]; y = Y_n's
//                                ow < OW columns (+ bias)
//   weight grad   gW^T [R, O] += shifted(xpad_n) . gy_n^T as outer products
//                                over the valid positions only, O along the
//                                vector lanes (dot products over the grid,
//                                a reduction per sample and the discarded
//                                positions multiplied, made a LeNet-5 step
//                                12% slower on conv2 and tied on conv1)
//   bias grad     gb [O]      += sum of gy_n over its plane
//   input grad    D_n [R, G]   = W^T [R, O] . gY_n [O, G] (gY_n: gy_n on the
//                                grid, zero at the discarded positions);
//                                gxpad_n = the sum of D_n's rows added at
//                                their shifts (col2im on the grid: whole
//                                rows of G floats, where col2im adds rows of
//                                OW), added by the GEMM kernel as it
//                                finishes each block of rows, so that D_n
//                                is never stored; gx = its interior
//
// Contract: geometry stride 1; pointers address the sizes named; xpad has
// padded_floats() floats. The GEMMs run the kernels' variant given to the
// constructor (default: the widest the CPU supports, tensor/small_gemm.h).
// Ownership: ImplicitConv owns its row offsets; the kernels' table is static.
// Thread safety: reentrant (scratch is the caller's). Threads: pad_input,
// forward and input_grad split the batch over tensor::intra_op_threads()
// (tensor/intra_op.h), contiguous sample ranges, each part with scratch of
// its own (part 0 the caller's, the others allocate theirs): outputs are
// bit-identical to one thread. weight_grad sums over the batch, so it splits
// the rows R of gW^T instead (each row summed in one thread's order:
// bit-identical) and, in the same fan-out, the bias gradient's channels.
// Blocking: returns when every part has finished. Errors: none (shapes are
// the caller's contract).
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/conv_kernels.h"
#include "tensor/small_gemm.h"

namespace dtrain::ops {

class ImplicitConv {
 public:
  explicit ImplicitConv(const Conv2dGeometry& g,
                        const SmallGemmKernels& kernels = small_gemm_kernels());

  const Conv2dGeometry& geometry() const { return g_; }
  // Floats of the padded input: N samples of C*Hp*Wp, then zeros that the
  // last sample's discarded positions read.
  int64_t padded_floats() const { return g_.n * sample_ + slack_; }
  // Floats of scratch forward needs ([O, G]), and weight_grad.
  int64_t scratch_floats(int64_t out_channels) const { return out_channels * grid_; }
  int64_t weight_grad_scratch_floats(int64_t out_channels) const;
  int64_t input_grad_scratch_floats(int64_t out_channels) const;

  // x [N, C, H, W] -> xpad (every float written).
  void pad_input(const float* x, float* xpad) const;
  // y [N, O, OH, OW] = conv(x, w [O, R]) + bias [O] (bias may be null).
  void forward(const float* xpad, const float* w, int64_t out_channels, const float* bias, float* y,
               float* scratch) const;
  // gw [O, R] and gb [O] (either may be null) from gy [N, O, OH, OW]; they
  // are overwritten.
  void weight_grad(const float* xpad, const float* gy, int64_t out_channels, float* gw, float* gb,
                   float* scratch) const;
  // gx [N, C, H, W] (overwritten) from gy [N, O, OH, OW] and w [O, R].
  void input_grad(const float* gy, const float* w, int64_t out_channels, float* gx,
                  float* scratch) const;

 private:
  int64_t padded_channels(int64_t out_channels) const;
  void pad_samples(int64_t begin, int64_t end, const float* x, float* xpad) const;
  void forward_samples(int64_t begin, int64_t end, const float* xpad, const float* w,
                       int64_t out_channels, const float* bias, float* y, float* scratch) const;
  void input_grad_samples(int64_t begin, int64_t end, const float* gy, const float* wt,
                          int64_t out_channels, float* gx, float* scratch) const;
  void weight_grad_outer(const float* xpad, const float* gy, int64_t out_channels, float* gw,
                         float* gb, float* scratch) const;
  void bias_grad(const float* gy, int64_t out_channels, int64_t o0, int64_t o1, float* gb) const;

  Conv2dGeometry g_;
  const SmallGemmKernels* kernels_;  // a static table (small_gemm.h)
  int64_t hp_ = 0, wp_ = 0;
  int64_t sample_ = 0;  // C * Hp * Wp
  int64_t grid_ = 0;    // G
  int64_t slack_ = 0;
  std::vector<int64_t> offsets_;       // R shifts, row (c, kh, kw) at c*Hp*Wp + kh*Wp + kw
  std::vector<int64_t> grad_rows_;     // the rows in (kh, kw, c) order, for input_grad
  std::vector<int64_t> grad_offsets_;  // offsets_ in that order
};

}  // namespace dtrain::ops
