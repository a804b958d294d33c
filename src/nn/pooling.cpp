#include "nn/pooling.h"

#include <fmt/format.h>

#include "autograd/functions.h"

namespace dtrain::nn {

Pool2d::Pool2d(std::string kind, int64_t kernel, int64_t stride, int64_t padding)
    : Module(std::move(kind)),
      kernel_(kernel),
      stride_(stride == 0 ? kernel : stride),
      padding_(padding) {
  if (kernel <= 0 || stride < 0 || padding < 0 || padding > kernel / 2) {
    fail(
        fmt::format("invalid configuration kernel {}, stride {}, padding {} (kernel must be "
                    "positive, stride non-negative, padding between 0 and kernel / 2)",
                    kernel, stride, padding));
  }
}

Shape Pool2d::output_shape(const Shape& input) const {
  if (input.size() != 4) {
    fail(fmt::format("input {} is not [N, C, H, W]", shape_str(input)));
  }
  const int64_t h = input[2] + 2 * padding_;
  const int64_t w = input[3] + 2 * padding_;
  if (h < kernel_ || w < kernel_) {
    fail(fmt::format("input {} is smaller than the window {} (padding {})", shape_str(input),
                     kernel_, padding_));
  }
  return {input[0], input[1], (h - kernel_) / stride_ + 1, (w - kernel_) / stride_ + 1};
}

Variable MaxPool2d::forward(const Variable& input) {
  output_shape(input.shape());
  return max_pool2d(input, kernel_, stride_, padding_);
}

Variable MaxPool2d::forward_after_relu(const Variable& input) {
  output_shape(input.shape());
  return relu_max_pool2d(input, kernel_, stride_, padding_);
}

Variable AvgPool2d::forward(const Variable& input) {
  output_shape(input.shape());
  return avg_pool2d(input, kernel_, stride_, padding_);
}

}  // namespace dtrain::nn
