// BatchBalancer: dynamic batch sizing for synchronous data parallelism on
// workers of unequal speed. The global batch of B rows stays fixed; worker i
// gets n_i rows with sum_i n_i = B, n_i proportional to its measured
// throughput (samples per second of its compute), so that every worker
// finishes its share at about the same time and nobody waits for the
// slowest one at the allreduce.
//
// Algorithm (docs/allreduce-strategy.md, "Dynamic batch sizing"):
//  1. observe(): once per update every worker's throughput measurement
//     arrives (the same vector on every worker); each positive one updates
//     that worker's estimate, an exponential moving average
//        rate_i <- smoothing * rate_i + (1 - smoothing) * measured_i
//     (the first measurement initialises it). A zero means "no measurement"
//     (the worker had no rows) and keeps the estimate.
//  2. every `rebalance_every` observations the shares are recomputed:
//     share_i = rate_i / sum_j rate_j (a worker never measured gets the mean
//     of the measured rates), then bounded to [min_share, max_share] by
//     water-filling (clamp, give the excess or deficit to the unclamped
//     workers in proportion to their rates, repeat).
//  3. split(B) turns the shares into integer rows: each worker's continuous
//     target B * share_i is bounded to [ceil(min_share B), floor(max_share B)]
//     (relaxed to [0, B] when W of them cannot fit B), floored, and the rows
//     left over go one each to the largest fractional parts, ties to the
//     lower rank.
// Everything is deterministic arithmetic on the inputs: workers that
// observe the same vectors compute bit-identical shares and splits, which is
// what lets every worker know every other worker's rows without a message.
//
// Gradients stay exact whatever the shares: the strategies aggregate
// sum_i n_i g_i / sum_i n_i, which equals the global-batch gradient.
//
// Thread safety: none (a value type owned by one strategy).
// Errors: UsageError for bad options and for measurement vectors whose
// length is not the worker count. Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::strategy {

struct BatchBalancerOptions {
  // Off: equal shares, as the static split [B r / W, B (r + 1) / W).
  bool enabled = false;
  // Observations (updates) between two re-balancings; >= 1.
  int64_t rebalance_every = 10;
  // Weight of the old estimate in the moving average, in [0, 1): 0 trusts
  // the last measurement alone, 0.9 averages over about ten.
  double smoothing = 0.5;
  // Bounds on one worker's share of the global batch, 0 <= min_share <=
  // 1 / W <= max_share <= 1. A worker at min_share 0 could be given no rows
  // and would then never be measured again: keep it positive.
  double min_share = 0.01;
  double max_share = 1.0;
};

class BatchBalancer {
 public:
  // UsageError for workers < 1 or options outside their ranges.
  BatchBalancer(int64_t workers, BatchBalancerOptions options);

  int64_t workers() const { return static_cast<int64_t>(shares_.size()); }
  const BatchBalancerOptions& options() const { return options_; }

  // One update's measurements: samples_per_s[i] is worker i's throughput
  // (0: not measured). Returns true when this observation re-balanced the
  // shares. With enabled = false it records nothing and returns false.
  bool observe(std::span<const double> samples_per_s);

  // The current fractions of the global batch, summing to 1.
  const std::vector<double>& shares() const { return shares_; }
  // Each worker's smoothed throughput; 0 until measured.
  const std::vector<double>& samples_per_s() const { return rates_; }
  // Re-balancings so far.
  int64_t rebalances() const { return rebalances_; }

  // The rows of each worker in a batch of `batch_rows` (>= 0): integers
  // within the bounds, summing to batch_rows.
  std::vector<int64_t> split(int64_t batch_rows) const;

  // Sets the shares directly (fractions, normalised here; bounds applied);
  // the estimates are kept. For tests and for callers that know the speeds.
  void set_shares(std::span<const double> weights);
  // Back to equal shares and no estimates (a resumed run starts here).
  void reset();

 private:
  void rebalance();

  BatchBalancerOptions options_;
  std::vector<double> shares_;
  std::vector<double> rates_;
  int64_t observations_ = 0;
  int64_t rebalances_ = 0;
  // The shares were never changed: split() gives the static split exactly.
  bool equal_ = true;
};

// Fractions proportional to `weights` (non-negative, not all 0), each within
// [lo, hi] and summing to 1 (requires W lo <= 1 <= W hi). Exposed for tests.
std::vector<double> bounded_shares(std::span<const double> weights, double lo, double hi);

// Integer rows proportional to `shares` (summing to 1) of `total` rows, each
// within [min_rows, max_rows] and summing to `total` (requires W min_rows <=
// total <= W max_rows). Largest remainders, ties to the lower index.
std::vector<int64_t> apportion(int64_t total, std::span<const double> shares, int64_t min_rows,
                               int64_t max_rows);

}  // namespace dtrain::strategy
