// DpSgd: differentially private SGD (Abadi et al. 2016, "Deep Learning with
// Differential Privacy", Algorithm 1) for the trainer, strategy local.
//
// One step (update s, 0-based):
//   1. Poisson sampling (data/poisson_sampler.h): each training example is
//      in the batch independently with probability q = batch_size / N,
//      from a generator seeded by (job seed, s); the batch may be empty.
//   2. Per-sample gradients of the batch's per-sample losses, clipped to
//      norm C (nn/per_sample_gradients.h computes the norms and the clipped
//      sum without any per-sample gradient of the whole model;
//      privacy/dp_sgd.h the clip factors).
//   3. Gaussian noise N(0, sigma^2 C^2) on every coordinate of the clipped
//      sum, from a generator seeded by (job seed, s), then division by the
//      expected batch size q N (Opacus's convention): an empty batch still
//      takes a step of pure noise.
//   4. The optimizer's update, and the RDP accountant's step(q, sigma).
// Every step's randomness depends only on (seed, s), so a run resumed from
// a checkpoint (model, optimizer and the accountant's state) continues bit
// for bit.
//
// The budget: with privacy.target_epsilon, budget_stop() tells the trainer,
// before each step, whether that step would bring the Balle epsilon at
// delta above the target; the trainer then stops (a normal end: the final
// model is written). When noise_multiplier is 0, sigma is solved from the
// target for the planned steps (privacy::solve_noise_multiplier).
//
// Ownership: holds references to the strategy's model and optimizer (the
// strategy outlives the trainer that owns this) and to the training set
// (alive for fit()). Thread safety: none (the training thread).
// Errors: ConfigError naming privacy.enabled for a strategy other than
// local or a model with a layer that has no per-sample gradient;
// UsageError from the accountant's solver (a target below its floor)
// rethrown as ConfigError naming privacy.target_epsilon.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "data/dataset.h"
#include "data/poisson_sampler.h"
#include "nn/per_sample_gradients.h"
#include "privacy/rdp_accountant.h"
#include "strategy/strategy.h"
#include "train/job_config.h"

namespace dtrain::strategy {
class LocalStrategy;
}

namespace dtrain::train {

class DpSgd {
 public:
  // `planned_steps`: the steps the run is planned to take (sigma is solved
  // for them when it is not given).
  DpSgd(const JobConfig& job, strategy::Strategy& strategy, const data::TensorDataset& train,
        int64_t planned_steps);

  double sample_rate() const { return sampler_.sample_rate(); }
  double noise_multiplier() const { return sigma_; }
  // A line for the log: q, sigma (and whether it was solved), C, delta.
  const std::string& description() const { return description_; }

  // Trains update `step` (0-based) as above; the stats are the sampled
  // batch's (loss_sum and correct before the update).
  strategy::StepStats step(int64_t step);

  // With a target: the message to stop with when update `step` (0-based)
  // would bring epsilon above it; nullopt when it may go ahead.
  std::optional<std::string> budget_stop(int64_t step) const;

  privacy::PrivacySpent spent() const { return accountant_.epsilon(job_.privacy.delta); }
  double delta() const { return job_.privacy.delta; }

  // The accountant's state as checkpoint metadata ("privacy_orders",
  // "privacy_phases"), and back. restore() throws UsageError naming the key.
  std::map<std::string, std::string> checkpoint_metadata() const;
  void restore(const std::map<std::string, std::string>& metadata);

 private:
  const JobConfig& job_;
  strategy::LocalStrategy& local_;
  const data::TensorDataset& train_;
  std::unique_ptr<nn::PerSampleGradients> per_sample_;
  data::PoissonSampler sampler_;
  double sigma_ = 0.0;
  privacy::RdpAccountant accountant_;
  std::string description_;
};

}  // namespace dtrain::train
