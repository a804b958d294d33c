#include "nn/batch_norm.h"

#include <fmt/format.h>

#include <charconv>

#include "autograd/functions.h"

namespace dtrain::nn {

BatchNorm::BatchNorm(std::string kind, int64_t input_dims, int64_t num_features, float eps,
                     float momentum)
    : Module(std::move(kind)),
      input_dims_(input_dims),
      num_features_(num_features),
      eps_(eps),
      momentum_(momentum) {
  if (num_features <= 0 || !(eps > 0.0f) || !(momentum >= 0.0f && momentum <= 1.0f)) {
    fail(
        fmt::format("invalid configuration num_features {}, eps {}, momentum {} (num_features "
                    "and eps must be positive, momentum in [0, 1])",
                    num_features, eps, momentum));
  }
  weight_ = register_parameter("weight", Tensor::ones({num_features}));
  bias_ = register_parameter("bias", Tensor::zeros({num_features}));
  running_mean_ = register_buffer("running_mean", Tensor::zeros({num_features}));
  running_var_ = register_buffer("running_var", Tensor::ones({num_features}));
}

Shape BatchNorm::output_shape(const Shape& input) const {
  if (static_cast<int64_t>(input.size()) != input_dims_ || input[1] != num_features_) {
    fail(fmt::format("input {} does not match num_features {} (expects {})", shape_str(input),
                     num_features_, input_dims_ == 2 ? "[N, C]" : "[N, C, H, W]"));
  }
  return input;
}

Variable BatchNorm::forward(const Variable& input) {
  output_shape(input.shape());
  if (is_training() && input.numel() / num_features_ <= 1) {
    fail(
        fmt::format("input {} has only one value per channel; training needs more to estimate "
                    "a variance",
                    shape_str(input.shape())));
  }
  Variable out = dtrain::batch_norm(input, weight_, bias_, running_mean_, running_var_,
                                    is_training(), momentum_, eps_);
  if (is_training()) ++num_batches_tracked_;
  return out;
}

std::map<std::string, std::string> BatchNorm::extra_state() const {
  return {{"num_batches_tracked", std::to_string(num_batches_tracked_)}};
}

void BatchNorm::load_extra_state(const std::map<std::string, std::string>& values, bool apply) {
  for (const auto& [key, value] : values) {
    if (key != "num_batches_tracked") fail(fmt::format("unknown extra state key '{}'", key));
    int64_t count = 0;
    const auto result = std::from_chars(value.data(), value.data() + value.size(), count);
    if (result.ec != std::errc() || result.ptr != value.data() + value.size() || count < 0) {
      fail(
          fmt::format("extra state 'num_batches_tracked' is '{}', expected a non-negative "
                      "integer",
                      value));
    }
    if (apply) num_batches_tracked_ = count;
  }
}

}  // namespace dtrain::nn
