#include "nn/conv2d.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/functions.h"
#include "nn/init.h"

namespace dtrain::nn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel, Rng& rng, int64_t stride,
               int64_t padding, bool bias)
    : Module("conv2d"),
      in_channels_(in_channels),
      out_channels_(out_channels),
      kernel_(kernel),
      stride_(stride),
      padding_(padding) {
  if (in_channels <= 0 || out_channels <= 0 || kernel <= 0 || stride <= 0 || padding < 0) {
    fail(fmt::format(
        "invalid configuration in_channels {}, out_channels {}, kernel {}, stride {}, "
        "padding {} (channels, kernel and stride must be positive, padding non-negative)",
        in_channels, out_channels, kernel, stride, padding));
  }
  weight_ =
      register_parameter("weight", Tensor::empty({out_channels, in_channels, kernel, kernel}));
  init::kaiming_uniform(weight_.data(), std::sqrt(5.0f), rng);
  if (bias) {
    bias_ = register_parameter("bias", Tensor::empty({out_channels}));
    const int64_t fan = init::fan_in(weight_.shape());
    const auto bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan)));
    init::uniform(bias_.data(), -bound, bound, rng);
  }
}

Shape Conv2d::output_shape(const Shape& input) const {
  if (input.size() != 4 || input[1] != in_channels_) {
    fail(fmt::format("input {} does not match weight {} (expects [N, {}, H, W])", shape_str(input),
                     shape_str(weight_.shape()), in_channels_));
  }
  const int64_t h = input[2] + 2 * padding_;
  const int64_t w = input[3] + 2 * padding_;
  if (h < kernel_ || w < kernel_) {
    fail(fmt::format("input {} is smaller than the kernel {} (padding {})", shape_str(input),
                     kernel_, padding_));
  }
  return {input[0], out_channels_, (h - kernel_) / stride_ + 1, (w - kernel_) / stride_ + 1};
}

Variable Conv2d::forward(const Variable& input) {
  output_shape(input.shape());
  return conv2d(input, weight_, bias_, stride_, padding_);
}

}  // namespace dtrain::nn
