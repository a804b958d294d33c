#include "optim/optimizer_config.h"

#include <fmt/format.h>

#include "core/error.h"
#include "optim/adagrad.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace dtrain::optim {

namespace {

// The constructors check their hyperparameters and throw UsageError
// "<kind>: <problem>"; from a config that is a ConfigError.
template <class Build>
std::unique_ptr<UpdateRule> build_or_config_error(const Build& build) {
  try {
    return build();
  } catch (const UsageError& e) {
    throw ConfigError(fmt::format("optimizer: {}", e.what()));
  }
}

}  // namespace

std::unique_ptr<UpdateRule> make_update_rule(const OptimizerConfig& config,
                                             std::vector<Shape> shapes) {
  const std::string& type = config.type;
  if (type == "sgd") {
    SgdOptions options;
    options.lr = config.lr;
    options.momentum = config.momentum;
    options.dampening = config.dampening;
    options.nesterov = config.nesterov;
    options.weight_decay = config.weight_decay.value_or(options.weight_decay);
    return build_or_config_error([&] { return std::make_unique<Sgd>(std::move(shapes), options); });
  }
  if (type == "adam" || type == "adamw") {
    AdamOptions options = type == "adam" ? AdamOptions{} : AdamW::defaults();
    options.lr = config.lr;
    options.beta1 = config.beta1;
    options.beta2 = config.beta2;
    options.eps = config.eps.value_or(options.eps);
    options.weight_decay = config.weight_decay.value_or(options.weight_decay);
    return build_or_config_error([&]() -> std::unique_ptr<UpdateRule> {
      if (type == "adam") return std::make_unique<Adam>(std::move(shapes), options);
      return std::make_unique<AdamW>(std::move(shapes), options);
    });
  }
  if (type == "adagrad") {
    AdagradOptions options;
    options.lr = config.lr;
    options.lr_decay = config.lr_decay;
    options.initial_accumulator_value = config.initial_accumulator_value;
    options.eps = config.eps.value_or(options.eps);
    options.weight_decay = config.weight_decay.value_or(options.weight_decay);
    return build_or_config_error(
        [&] { return std::make_unique<Adagrad>(std::move(shapes), options); });
  }
  throw ConfigError(fmt::format(
      "optimizer.type: unknown optimizer '{}' (expected sgd, adam, adamw or adagrad)", type));
}

}  // namespace dtrain::optim
