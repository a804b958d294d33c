// LocalStrategy: one model, one optimizer, no communication. The reference
// that every other strategy must match.
// Ownership, thread safety and errors: see strategy.h.
#pragma once

#include "strategy/strategy.h"

namespace dtrain::strategy {

class LocalStrategy : public Strategy {
 public:
  LocalStrategy(std::unique_ptr<nn::Module> model, const OptimizerFactory& make_optimizer,
                LossFn loss = cross_entropy_loss());

  std::string name() const override { return "local"; }
  int64_t replicas() const override { return 1; }
  nn::Module& model() override { return *model_; }
  optim::Optimizer& optimizer() override { return *optimizer_; }
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;

 private:
  std::unique_ptr<nn::Module> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  LossFn loss_;
};

}  // namespace dtrain::strategy
