#include "nn/linear.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/functions.h"
#include "nn/init.h"

namespace dtrain::nn {

Linear::Linear(int64_t in_features, int64_t out_features, Rng& rng, bool bias)
    : Module("linear"), in_features_(in_features), out_features_(out_features) {
  if (in_features <= 0 || out_features <= 0) {
    fail(fmt::format("in_features {} and out_features {} must be positive", in_features,
                     out_features));
  }
  weight_ = register_parameter("weight", Tensor::empty({out_features, in_features}));
  init::kaiming_uniform(weight_.data(), std::sqrt(5.0f), rng);
  if (bias) {
    bias_ = register_parameter("bias", Tensor::empty({out_features}));
    const auto bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(in_features)));
    init::uniform(bias_.data(), -bound, bound, rng);
  }
}

Shape Linear::output_shape(const Shape& input) const {
  if (input.size() != 2 || input[1] != in_features_) {
    fail(fmt::format("input {} does not match weight {}{}", shape_str(input),
                     shape_str(weight_.shape()),
                     input.size() == 2 ? "" : fmt::format(" (expects [N, {}])", in_features_)));
  }
  return {input[0], out_features_};
}

Variable Linear::forward(const Variable& input) {
  output_shape(input.shape());
  return linear(input, weight_, bias_);
}

Variable Linear::forward_relu(const Variable& input) {
  output_shape(input.shape());
  return linear_relu(input, weight_, bias_);
}

}  // namespace dtrain::nn
