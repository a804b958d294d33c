// BatchBalancer: dynamic batch sizing for synchronous data parallelism on
// workers of unequal speed. The global batch of B rows stays fixed; worker i
// gets n_i rows with sum_i n_i = B, chosen so that every worker's predicted
// step time is the same and nobody waits for the slowest one at the
// allreduce.
//
// Model and algorithm (docs/allreduce-strategy.md, "Dynamic batch sizing"):
//  1. observe(): once per update, every worker's rows and compute seconds of
//     one step arrive (the same vectors on every worker). Each worker keeps
//     its recent (rows, seconds) observations, those of the last
//     `history_periods` re-balancing periods.
//  2. Every `rebalance_every` observations each worker's step time is fitted
//     by an affine model  t_i(n) = fixed_s_i + n / rows_per_s_i : a fixed
//     per-step cost plus a cost per row. The fit is weighted least squares
//     (an observation's weight is smoothing^k, k = re-balancings since it was
//     made) with the slope drawn towards the previous fit's slope (ridge,
//     as strong as a spread of kPriorSpread of the rows), so a worker whose
//     rows barely changed keeps its slope and its line is re-anchored on its
//     recent mean point; the first fit, with one row count only, is the
//     proportional model (fixed_s = 0). The intercept is bounded to
//     [0, kMaxFixedFraction] of the mean step time, which keeps the slope
//     positive. A worker never measured gets the mean of the others' models.
//  3. split(B) finds the time T with sum_i clamp((T - fixed_s_i) *
//     rows_per_s_i, min_share B, max_share B) = B (bisection), bounds each
//     worker's continuous target to [ceil(min_share B), floor(max_share B)]
//     (relaxed to [0, B] when W of them cannot fit B), floors it, and gives
//     the rows left over one each to the largest fractional parts, ties to
//     the lower rank.
// With fixed_s = 0 this is the proportional split n_i ~ throughput_i; with
// a fixed cost it is not, and the proportional model would drift: a small
// share pays the fixed cost over few rows, looks slow, and shrinks further.
// Everything is deterministic arithmetic on the inputs: workers that observe
// the same vectors compute bit-identical models and splits, which is what
// lets every worker know every other worker's rows without a message.
//
// Gradients stay exact whatever the split: the strategies aggregate
// sum_i n_i g_i / sum_i n_i, which equals the global-batch gradient.
//
// Thread safety: none (a value type owned by one strategy).
// Errors: UsageError for bad options and for observation vectors whose
// length is not the worker count. Never blocks.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

namespace dtrain::strategy {

struct BatchBalancerOptions {
  // Off: equal shares, as the static split [B r / W, B (r + 1) / W).
  bool enabled = false;
  // Observations (updates) between two re-balancings; >= 1.
  int64_t rebalance_every = 10;
  // Weight of the previous re-balancing period's observations relative to
  // the current period's in the fit, in [0, 1): 0 fits the current period
  // alone, 0.5 halves the weight per period.
  double smoothing = 0.5;
  // Re-balancing periods of observations kept per worker for the fit; >= 1.
  int64_t history_periods = 4;
  // Bounds on one worker's share of the global batch, 0 <= min_share <=
  // 1 / W <= max_share <= 1. A worker at min_share 0 could be given no rows
  // and would then never be measured again: keep it positive.
  double min_share = 0.01;
  double max_share = 1.0;
};

// One worker's predicted step time for n rows: fixed_s + n / rows_per_s.
struct WorkerCostModel {
  double fixed_s = 0.0;     // per-step cost, independent of the rows
  double rows_per_s = 0.0;  // marginal throughput; 0: not fitted yet
};

class BatchBalancer {
 public:
  // How far the previous slope holds against new data: the ridge is as
  // strong as observations whose rows spread by this fraction of their mean.
  static constexpr double kPriorSpread = 0.1;
  // The fixed cost is at most this fraction of a worker's mean step time.
  static constexpr double kMaxFixedFraction = 0.9;

  // UsageError for workers < 1 or options outside their ranges.
  BatchBalancer(int64_t workers, BatchBalancerOptions options);

  int64_t workers() const { return static_cast<int64_t>(shares_.size()); }
  const BatchBalancerOptions& options() const { return options_; }

  // One update's measurements: worker i computed rows[i] rows in seconds[i]
  // seconds (rows 0 or seconds 0: not measured, nothing recorded). Returns
  // true when this observation re-balanced. With enabled = false it records
  // nothing and returns false.
  bool observe(std::span<const double> rows, std::span<const double> seconds);

  // The current fractions of the global batch of the latest observation's
  // size (sum of its rows), summing to 1; split() recomputes them for the
  // batch it is given.
  const std::vector<double>& shares() const { return shares_; }
  // Each worker's fitted model as of the last re-balancing (rows_per_s 0
  // until then).
  const std::vector<WorkerCostModel>& models() const { return models_; }
  // Re-balancings so far.
  int64_t rebalances() const { return rebalances_; }

  // The rows of each worker in a batch of `batch_rows` (>= 0): integers
  // within the bounds, summing to batch_rows, equalising the models'
  // predicted times (or following set_shares()).
  std::vector<int64_t> split(int64_t batch_rows) const;

  // Sets the shares directly (fractions, normalised here; bounds applied)
  // and forgets the fitted slopes; the observations are kept. For tests and
  // for callers that know the speeds.
  void set_shares(std::span<const double> weights);
  // Back to equal shares and no observations (a resumed run starts here).
  void reset();

 private:
  struct Observation {
    double rows;
    double seconds;
    int64_t period;  // rebalances_ when it was made
  };
  void rebalance();
  WorkerCostModel fit(size_t worker) const;

  enum class Mode { kStatic, kShares, kModel };

  BatchBalancerOptions options_;
  Mode mode_ = Mode::kStatic;
  std::vector<double> shares_;
  std::vector<WorkerCostModel> models_;
  std::vector<bool> fitted_;  // models_[i] came from a fit (its slope is a prior)
  std::vector<std::deque<Observation>> history_;
  double reference_rows_ = 0.0;  // the latest observation's batch
  int64_t observations_ = 0;
  int64_t rebalances_ = 0;
};

// Fractions proportional to `weights` (non-negative, not all 0), each within
// [lo, hi] and summing to 1 (requires W lo <= 1 <= W hi). Exposed for tests.
std::vector<double> bounded_shares(std::span<const double> weights, double lo, double hi);

// Fractions x_i of `total_rows` (> 0) that equalise the predicted times
// fixed_s_i + x_i total_rows / rows_per_s_i, each within [lo, hi] and
// summing to 1 (requires every rows_per_s_i > 0 and W lo <= 1 <= W hi).
// Exposed for tests.
std::vector<double> equalizing_shares(std::span<const WorkerCostModel> models, double total_rows,
                                      double lo, double hi);

// Integer rows proportional to `shares` (summing to 1) of `total` rows, each
// within [min_rows, max_rows] and summing to `total` (requires W min_rows <=
// total <= W max_rows). Largest remainders, ties to the lower index.
std::vector<int64_t> apportion(int64_t total, std::span<const double> shares, int64_t min_rows,
                               int64_t max_rows);

}  // namespace dtrain::strategy
