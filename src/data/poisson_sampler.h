// PoissonSampler: the batches of DP-SGD. Each step includes each of the N
// examples independently with probability q (Poisson sampling), so a batch
// has q N examples on average and may be empty; the privacy accountant's
// sampled Gaussian mechanism assumes exactly this (privacy/rdp_accountant.h).
//
// Step s's batch depends only on (seed, s): a generator seeded from both
// draws one uniform per example, in index order, so a run resumed at step s
// draws the same batches as one that never stopped, and no sampler state
// needs a checkpoint.
//
// Ownership: a value. Thread safety: const methods are reentrant. Errors:
// UsageError for n < 0 or q outside [0, 1]. Nothing blocks. Cost: N uniform
// draws per batch.
#pragma once

#include <cstdint>
#include <vector>

namespace dtrain::data {

class PoissonSampler {
 public:
  PoissonSampler(int64_t examples, double sample_rate, uint64_t seed);

  // The indices of step `step`'s batch (0-based step), ascending.
  std::vector<int64_t> batch(int64_t step) const;

  int64_t examples() const { return examples_; }
  double sample_rate() const { return sample_rate_; }
  // q N: the expected batch size (DP-SGD divides its noisy sum by it).
  double expected_batch_size() const { return sample_rate_ * static_cast<double>(examples_); }

 private:
  int64_t examples_;
  double sample_rate_;
  uint64_t seed_;
};

}  // namespace dtrain::data
