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
  nn::Optimizer& optimizer() { return *optimizer_; }
  void set_learning_rate(float lr) override { optimizer_->set_lr(lr); }
  StateDict optimizer_state() override { return optimizer_->state_dict(); }
  void load_optimizer_state(const StateDict& state) override { optimizer_->load_state_dict(state); }
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  // One process: the sum is this process's gradients (strategy.h).
  bool sums_gradients() const override { return true; }
  StepStats step_on_gradients(const std::function<StepStats()>& local_gradients,
                              float scale) override;

 private:
  std::unique_ptr<nn::Module> model_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  LossFn loss_;
};

}  // namespace dtrain::strategy
