// OptimizerConfig and make_update_rule(): build any optimizer from the
// [optimizer] table of a job file, or from a parameter server's settings.
// Fields that an optimizer does not use are ignored; eps and weight_decay
// fall back to each optimizer's torch default when not given.
// Thread safety: a pure function. Errors: ConfigError naming
// "optimizer.<key>" for an unknown type or an invalid value.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "optim/update_rule.h"
#include "tensor/tensor.h"

namespace dtrain::optim {

struct OptimizerConfig {
  std::string type = "sgd";  // sgd | adam | adamw | adagrad
  float lr = 0.1f;
  float momentum = 0.0f;                             // sgd
  float dampening = 0.0f;                            // sgd
  bool nesterov = false;                             // sgd
  std::optional<float> weight_decay = std::nullopt;  // default: 0, adamw 0.01
  float beta1 = 0.9f;                                // adam, adamw
  float beta2 = 0.999f;                              // adam, adamw
  std::optional<float> eps = std::nullopt;           // default: adam(w) 1e-8, adagrad 1e-10
  float lr_decay = 0.0f;                             // adagrad
  float initial_accumulator_value = 0.0f;            // adagrad
};

// The rule for parameters of `shapes`.
std::unique_ptr<UpdateRule> make_update_rule(const OptimizerConfig& config,
                                             std::vector<Shape> shapes);

}  // namespace dtrain::optim
