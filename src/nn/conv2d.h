// Conv2d: 2-D convolution over NCHW batches, PyTorch's nn.Conv2d with square
// kernels, equal stride and padding on both axes, no dilation or groups.
//
// Shapes: x [N, C, H, W] -> y [N, O, Ho, Wo] with
//   Ho = (H + 2 padding - K) / stride + 1  (and Wo alike, rounding down);
// weight [O, C, K, K], bias [O].
// Initialisation (torch's default): weight ~ U(-b, b) with b = 1/sqrt(C K K)
// (kaiming_uniform, a = sqrt(5)), then bias ~ U(-b, b), drawn in that order
// from the Rng given to the constructor.
// Thread safety and errors: see module.h.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "nn/module.h"

namespace dtrain::nn {

class Conv2d : public Module {
 public:
  // Channels and kernel > 0, stride > 0, padding >= 0. `rng` is only used
  // during construction.
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel, Rng& rng, int64_t stride = 1,
         int64_t padding = 0, bool bias = true);

  Variable forward(const Variable& input) override;
  Shape output_shape(const Shape& input) const override;

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }
  const Variable& weight() const { return weight_; }
  // Undefined when built without bias.
  const Variable& bias() const { return bias_; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  int64_t kernel_;
  int64_t stride_;
  int64_t padding_;
  Variable weight_;
  Variable bias_;
};

}  // namespace dtrain::nn
