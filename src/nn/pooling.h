// MaxPool2d and AvgPool2d: PyTorch's nn.MaxPool2d / nn.AvgPool2d with square
// windows and floor rounding (ceil_mode=False); the kernels are
// dtrain::max_pool2d and dtrain::avg_pool2d (autograd/functions.h).
//
// Shapes: x [N, C, H, W] -> y [N, C, Ho, Wo] with
//   Ho = (H + 2 padding - K) / stride + 1  (and Wo alike, rounding down).
// No parameters. Thread safety and errors: see module.h; padding may be at
// most K / 2, as in torch.
#pragma once

#include <cstdint>

#include "nn/module.h"

namespace dtrain::nn {

class Pool2d : public Module {
 public:
  Shape output_shape(const Shape& input) const override;

  int64_t kernel() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 protected:
  // stride 0 means stride = kernel (torch's default).
  Pool2d(std::string kind, int64_t kernel, int64_t stride, int64_t padding);

  int64_t kernel_;
  int64_t stride_;
  int64_t padding_;
};

class MaxPool2d : public Pool2d {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0)
      : Pool2d("max_pool2d", kernel, stride, padding) {}
  Variable forward(const Variable& input) override;
  // forward(relu(input)) as one fused function (dtrain::relu_max_pool2d),
  // the same bits; Sequential calls it for a ReLU followed by a MaxPool2d.
  Variable forward_after_relu(const Variable& input);
};

class AvgPool2d : public Pool2d {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0)
      : Pool2d("avg_pool2d", kernel, stride, padding) {}
  Variable forward(const Variable& input) override;
};

}  // namespace dtrain::nn
