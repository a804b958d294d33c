#include "strategy/local_strategy.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain::strategy {

LocalStrategy::LocalStrategy(std::unique_ptr<nn::Module> model,
                             const OptimizerFactory& make_optimizer, LossFn loss)
    : model_(std::move(model)), optimizer_(make_optimizer(model_->parameters())), loss_(std::move(loss)) {}

StepStats LocalStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/false);
  model_->train();
  Variable output = model_->forward(Variable(inputs));
  Variable loss = loss_(output, targets);
  optimizer_->zero_grad();
  loss.backward();
  optimizer_->step();
  return {static_cast<double>(loss.item()) * static_cast<double>(n), count_correct(output.data(), targets), n};
}

}  // namespace dtrain::strategy
