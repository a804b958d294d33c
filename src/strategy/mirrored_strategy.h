// MirroredStrategy: N replicas of the model in one process, one thread each
// (TensorFlow's MirroredStrategy, PyTorch's DataParallel on CPU).
//
// A step: the batch is split into N contiguous slices (sizes differ by at
// most one); replica r runs forward and backward on slice r with its mean
// loss scaled by n_r / N, so the sum of the replicas' gradients is the
// sample-weighted mean gradient; the gradients are summed into replica 0 in
// parallel (each thread adds one range of the flattened parameters); replica
// 0's optimizer applies the update; every replica copies the new parameters
// and buffers from replica 0. The result equals LocalStrategy on the whole
// batch up to float summation order.
//
// Row-sparse gradients (embeddings) are folded to dense before summing.
// Ownership, thread safety and errors: see strategy.h.
#pragma once

#include <vector>

#include "core/thread_team.h"
#include "strategy/strategy.h"

namespace dtrain::strategy {

class MirroredStrategy : public Strategy {
 public:
  // `model` becomes replica 0; make_replica builds the others (their
  // weights are overwritten with replica 0's).
  MirroredStrategy(std::unique_ptr<nn::Module> model, const ModelFactory& make_replica,
                   int64_t replicas, const OptimizerFactory& make_optimizer,
                   LossFn loss = cross_entropy_loss());

  std::string name() const override { return "mirrored"; }
  int64_t replicas() const override { return static_cast<int64_t>(models_.size()); }
  nn::Module& model() override { return *models_[0]; }
  nn::Optimizer& optimizer() { return *optimizer_; }
  void set_learning_rate(float lr) override { optimizer_->set_lr(lr); }
  StateDict optimizer_state() override { return optimizer_->state_dict(); }
  void load_optimizer_state(const StateDict& state) override { optimizer_->load_state_dict(state); }
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  void sync_replicas() override;

 private:
  void sum_gradients(int64_t thread);
  void copy_from_primary(int64_t replica);

  std::vector<std::unique_ptr<nn::Module>> models_;
  std::vector<std::vector<Variable>> params_;  // params_[replica][i]
  std::vector<std::vector<Tensor>> buffers_;   // buffers_[replica][i]
  std::unique_ptr<nn::Optimizer> optimizer_;
  LossFn loss_;
  ThreadTeam threads_;
  std::vector<StepStats> stats_;
  int64_t total_elements_ = 0;
};

}  // namespace dtrain::strategy
