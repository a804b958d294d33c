// DpSgd: differentially private SGD (Abadi et al. 2016, "Deep Learning with
// Differential Privacy", Algorithm 1) for the trainer, on any strategy that
// sums its workers' gradients (Strategy::sums_gradients(): local, and
// allreduce with W processes; docs/privacy.md).
//
// One step (update s, 0-based), on every rank r of W:
//   1. Poisson sampling (data/poisson_sampler.h): each training example is
//      in the batch independently with probability q = batch_size / N,
//      from a generator seeded by (job seed, s), the same on every rank; the
//      batch may be empty. Rank r takes its rows of it, the static split
//      (Strategy::row_range()), so the union over the ranks is exactly the
//      Poisson batch of the whole training set.
//   2. Per-sample gradients of its rows' per-sample losses, clipped to norm
//      C (nn/per_sample_gradients.h computes the norms and the clipped sum
//      without any per-sample gradient of the whole model; privacy/dp_sgd.h
//      the clip factors).
//   3. Gaussian noise of standard deviation sigma C / sqrt(W) on every
//      coordinate of its clipped sum (privacy::noise_stddev_per_worker),
//      from a generator seeded by (job seed, s) when W = 1 and by (job seed,
//      s, r) otherwise, so the W noises are independent and their sum is
//      N(0, sigma^2 C^2).
//   4. Strategy::step_on_gradients sums the ranks' noisy sums, divides by the
//      expected batch size q N (Opacus's convention: an empty batch still
//      takes a step of pure noise) and applies one optimizer update; the RDP
//      accountant steps (q, sigma) alike on every rank.
// What the job releases per step is the noisy sum of the whole Poisson
// batch, as with one process, so the accounting is the same; W = 1 is bit
// for bit the one-process algorithm. Every step's randomness depends only
// on (seed, s, r), so a run resumed from a checkpoint (model, optimizer and
// the accountant's state, restored on every rank) continues bit for bit.
//
// The budget: with privacy.target_epsilon, budget_stop() tells the trainer,
// before each step, whether that step would bring the Balle epsilon at
// delta above the target; the trainer then stops (a normal end: the final
// model is written). The answer depends on the accountant alone, so every
// rank stops at the same step. When noise_multiplier is 0, sigma is solved
// from the target for the planned steps (privacy::solve_noise_multiplier).
//
// Ownership: holds references to the strategy (it outlives the trainer that
// owns this) and to the training set (alive for fit()). Thread safety: none
// (the training thread). Errors: ConfigError naming privacy.enabled for a
// strategy that does not sum gradients or a model with a layer that has no
// per-sample gradient; UsageError from the accountant's solver (a target
// below its floor) rethrown as ConfigError naming privacy.target_epsilon;
// step() throws what Strategy::step_on_gradients throws. Blocking: step()
// is collective over the strategy's processes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/rng.h"
#include "data/dataset.h"
#include "data/poisson_sampler.h"
#include "nn/per_sample_gradients.h"
#include "privacy/rdp_accountant.h"
#include "strategy/strategy.h"
#include "train/job_config.h"

namespace dtrain::train {

// Why a strategy named `strategy` cannot run DP-SGD, naming those that can
// (for the ConfigError on privacy.enabled, here and at launch).
std::string dp_strategy_refusal(std::string_view strategy);

class DpSgd {
 public:
  // `planned_steps`: the steps the run is planned to take (sigma is solved
  // for them when it is not given).
  DpSgd(const JobConfig& job, strategy::Strategy& strategy, const data::TensorDataset& train,
        int64_t planned_steps);

  double sample_rate() const { return sampler_.sample_rate(); }
  double noise_multiplier() const { return sigma_; }
  // A line for the log: q, sigma (and whether it was solved), C, delta, and
  // with W > 1 the noise each worker adds.
  const std::string& description() const { return description_; }
  // The standard deviation of the noise this rank adds per coordinate:
  // sigma C / sqrt(W).
  double noise_stddev() const { return noise_stddev_; }
  // Tests: replaces noise_stddev() (0: the clipped sums alone). The
  // accountant still counts sigma, so the epsilon reported is then not what
  // the run spends.
  void set_noise_stddev(double stddev) { noise_stddev_ = stddev; }

  // Trains update `step` (0-based) as above; the stats are this rank's rows
  // of the sampled batch (loss_sum and correct before the update);
  // Strategy::step_totals() gives the whole batch's.
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
  // Steps 1 to 3 above: this rank's clipped sum plus its noise in the
  // model's gradients; its rows' statistics.
  strategy::StepStats local_gradients(int64_t step);
  Rng noise_stream(int64_t step) const;

  const JobConfig& job_;
  strategy::Strategy& strategy_;
  const data::TensorDataset& train_;
  std::unique_ptr<nn::PerSampleGradients> per_sample_;
  data::PoissonSampler sampler_;
  double sigma_ = 0.0;
  double noise_stddev_ = 0.0;
  privacy::RdpAccountant accountant_;
  std::string description_;
};

}  // namespace dtrain::train
