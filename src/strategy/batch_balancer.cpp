#include "strategy/batch_balancer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace dtrain::strategy {
namespace {

// The static split: worker r takes [B r / W, B (r + 1) / W).
std::vector<int64_t> equal_split(int64_t total, int64_t workers) {
  std::vector<int64_t> rows(static_cast<size_t>(workers));
  for (int64_t r = 0; r < workers; ++r) {
    rows[static_cast<size_t>(r)] = total * (r + 1) / workers - total * r / workers;
  }
  return rows;
}

}  // namespace

std::vector<double> bounded_shares(std::span<const double> weights, double lo, double hi) {
  const size_t n = weights.size();
  DTRAIN_CHECK(n > 0, "bounded_shares over no workers");
  DTRAIN_CHECK(lo >= 0.0 && lo * double(n) <= 1.0 + 1e-12 && hi * double(n) >= 1.0 - 1e-12,
               "infeasible bounds [{}, {}] for {} workers", lo, hi, n);
  double weight_sum = 0.0;
  for (double w : weights) {
    DTRAIN_CHECK(w >= 0.0 && std::isfinite(w), "weight {} is not a finite non-negative number", w);
    weight_sum += w;
  }
  if (weight_sum <= 0.0) return std::vector<double>(n, 1.0 / double(n));
  // f(lambda) = sum_i clamp(lambda w_i, lo, hi) grows with lambda; find the
  // lambda with f = 1 by bisection (the bounds are few breakpoints, and a
  // fixed number of halvings is deterministic on every platform).
  auto total_at = [&](double lambda) {
    double s = 0.0;
    for (double w : weights) s += std::clamp(lambda * w, lo, hi);
    return s;
  };
  double a = 0.0;
  double b = 1.0 / weight_sum;
  while (total_at(b) < 1.0 && b < 1e300) b *= 2.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (a + b);
    if (mid <= a || mid >= b) break;
    (total_at(mid) < 1.0 ? a : b) = mid;
  }
  // Workers at a bound keep it; the free ones share the rest exactly in
  // proportion to their weights, so the fractions sum to 1 up to rounding.
  std::vector<double> out(n);
  std::vector<bool> fixed(n, false);
  double fixed_sum = 0.0;
  double free_weight = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double x = b * weights[i];
    if (x <= lo || x >= hi) {
      out[i] = std::clamp(x, lo, hi);
      fixed[i] = true;
      fixed_sum += out[i];
    } else {
      free_weight += weights[i];
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (!fixed[i]) out[i] = std::clamp((1.0 - fixed_sum) * weights[i] / free_weight, lo, hi);
  }
  return out;
}

std::vector<int64_t> apportion(int64_t total, std::span<const double> shares, int64_t min_rows,
                               int64_t max_rows) {
  const auto n = static_cast<int64_t>(shares.size());
  DTRAIN_CHECK(n > 0 && total >= 0 && min_rows >= 0 && min_rows <= max_rows &&
                   n * min_rows <= total && n * max_rows >= total,
               "cannot apportion {} rows over {} workers within [{}, {}]", total, n, min_rows,
               max_rows);
  std::vector<int64_t> rows(static_cast<size_t>(n), 0);
  if (total == 0) return rows;
  const auto t = static_cast<double>(total);
  const std::vector<double> x =
      bounded_shares(shares, static_cast<double>(min_rows) / t, static_cast<double>(max_rows) / t);
  std::vector<double> fraction(static_cast<size_t>(n));
  int64_t assigned = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const double target = x[i] * t;
    rows[i] = std::clamp(static_cast<int64_t>(std::floor(target)), min_rows, max_rows);
    fraction[i] = target - static_cast<double>(rows[i]);
    assigned += rows[i];
  }
  // Largest remainders first, ties to the lower index; the order is a strict
  // total order, so every worker sorts alike.
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return fraction[a] > fraction[b]; });
  while (assigned < total) {
    bool gave = false;
    for (size_t i : order) {
      if (assigned == total) break;
      if (rows[i] < max_rows) {
        ++rows[i];
        ++assigned;
        gave = true;
      }
    }
    DTRAIN_CHECK(gave, "no worker below {} rows to take the remaining {}", max_rows,
                 total - assigned);
  }
  // Rounding of the fractions may have floored one row too many: take it
  // back from the smallest remainders.
  while (assigned > total) {
    bool took = false;
    for (auto it = order.rbegin(); it != order.rend() && assigned > total; ++it) {
      if (rows[*it] > min_rows) {
        --rows[*it];
        --assigned;
        took = true;
      }
    }
    DTRAIN_CHECK(took, "no worker above {} rows to give back {}", min_rows, assigned - total);
  }
  return rows;
}

std::vector<double> equalizing_shares(std::span<const WorkerCostModel> models, double total_rows,
                                      double lo, double hi) {
  const size_t n = models.size();
  DTRAIN_CHECK(n > 0 && total_rows > 0.0, "equalizing_shares: {} workers, {} rows", n, total_rows);
  DTRAIN_CHECK(lo >= 0.0 && lo * double(n) <= 1.0 + 1e-12 && hi * double(n) >= 1.0 - 1e-12,
               "infeasible bounds [{}, {}] for {} workers", lo, hi, n);
  double t_lo = models[0].fixed_s;
  double t_hi = models[0].fixed_s;
  for (const WorkerCostModel& m : models) {
    DTRAIN_CHECK(m.rows_per_s > 0.0 && std::isfinite(m.rows_per_s) && std::isfinite(m.fixed_s),
                 "cost model ({} s + rows / {} rows/s) is not a positive finite line", m.fixed_s,
                 m.rows_per_s);
    t_lo = std::min(t_lo, m.fixed_s);
    t_hi = std::max(t_hi, m.fixed_s);
  }
  // share_i(T) = clamp((T - fixed_s_i) rows_per_s_i / total, lo, hi) grows
  // with the common finishing time T; at T = min fixed_s every share is lo
  // (the sum is W lo <= 1); find T with sum 1 by bisection, a fixed number
  // of halvings, deterministic on every platform.
  auto share_at = [&](const WorkerCostModel& m, double t) {
    return std::clamp((t - m.fixed_s) * m.rows_per_s / total_rows, lo, hi);
  };
  auto total_at = [&](double t) {
    double s = 0.0;
    for (const WorkerCostModel& m : models) s += share_at(m, t);
    return s;
  };
  double step = 1.0;
  for (const WorkerCostModel& m : models) step = std::max(step, total_rows / m.rows_per_s);
  t_hi += step;
  while (total_at(t_hi) < 1.0 && t_hi < 1e300) t_hi += (t_hi - t_lo);
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (t_lo + t_hi);
    if (mid <= t_lo || mid >= t_hi) break;
    (total_at(mid) < 1.0 ? t_lo : t_hi) = mid;
  }
  // Workers at a bound keep it; the free ones move their common time by the
  // residual, so the fractions sum to 1 up to rounding.
  std::vector<double> out(n);
  std::vector<bool> is_free(n, false);
  double sum = 0.0;
  double free_slope = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double x = (t_hi - models[i].fixed_s) * models[i].rows_per_s / total_rows;
    out[i] = std::clamp(x, lo, hi);
    sum += out[i];
    if (x > lo && x < hi) {
      is_free[i] = true;
      free_slope += models[i].rows_per_s / total_rows;
    }
  }
  if (free_slope > 0.0) {
    const double dt = (1.0 - sum) / free_slope;
    for (size_t i = 0; i < n; ++i) {
      if (is_free[i]) out[i] = std::clamp(out[i] + dt * models[i].rows_per_s / total_rows, lo, hi);
    }
  }
  return out;
}

BatchBalancer::BatchBalancer(int64_t workers, BatchBalancerOptions options) : options_(options) {
  if (workers < 1) throw UsageError(fmt::format("batch balancer: {} workers < 1", workers));
  if (options_.rebalance_every < 1) {
    throw UsageError(fmt::format("batch balancer: rebalance_every must be at least 1, got {}",
                                 options_.rebalance_every));
  }
  if (options_.history_periods < 1) {
    throw UsageError(fmt::format("batch balancer: history_periods must be at least 1, got {}",
                                 options_.history_periods));
  }
  if (!(options_.smoothing >= 0.0 && options_.smoothing < 1.0)) {
    throw UsageError(
        fmt::format("batch balancer: smoothing must be in [0, 1), got {}", options_.smoothing));
  }
  const double w = static_cast<double>(workers);
  if (!(options_.min_share >= 0.0 && options_.min_share * w <= 1.0 + 1e-12)) {
    throw UsageError(fmt::format(
        "batch balancer: min_share {} must be in [0, 1/{}]: {} workers could not all get it",
        options_.min_share, workers, workers));
  }
  if (!(options_.max_share <= 1.0 && options_.max_share * w >= 1.0 - 1e-12)) {
    throw UsageError(fmt::format(
        "batch balancer: max_share {} must be in [1/{}, 1]: {} workers could not cover a batch",
        options_.max_share, workers, workers));
  }
  shares_.resize(static_cast<size_t>(workers));
  models_.resize(static_cast<size_t>(workers));
  fitted_.resize(static_cast<size_t>(workers));
  history_.resize(static_cast<size_t>(workers));
  reset();
}

void BatchBalancer::reset() {
  std::fill(shares_.begin(), shares_.end(), 1.0 / static_cast<double>(shares_.size()));
  std::fill(models_.begin(), models_.end(), WorkerCostModel{});
  std::fill(fitted_.begin(), fitted_.end(), false);
  for (auto& h : history_) h.clear();
  mode_ = Mode::kStatic;
  reference_rows_ = 0.0;
  observations_ = 0;
  rebalances_ = 0;
}

bool BatchBalancer::observe(std::span<const double> rows, std::span<const double> seconds) {
  if (rows.size() != shares_.size() || seconds.size() != shares_.size()) {
    throw UsageError(fmt::format("batch balancer: {} row counts and {} times for {} workers",
                                 rows.size(), seconds.size(), shares_.size()));
  }
  if (!options_.enabled) return false;
  double batch = 0.0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!(rows[i] > 0.0) || !(seconds[i] > 0.0) || !std::isfinite(rows[i]) ||
        !std::isfinite(seconds[i])) {
      continue;
    }
    batch += rows[i];
    history_[i].push_back({rows[i], seconds[i], rebalances_});
  }
  if (batch > 0.0) reference_rows_ = batch;
  if (++observations_ % options_.rebalance_every != 0) return false;
  rebalance();
  return true;
}

WorkerCostModel BatchBalancer::fit(size_t worker) const {
  const std::deque<Observation>& h = history_[worker];
  if (h.empty()) return {};
  // Weighted means, then the centred sums (no cancellation when one
  // period's weight is small).
  std::vector<double> weight(h.size());
  double w_sum = 0.0;
  double x_mean = 0.0;
  double t_mean = 0.0;
  for (size_t k = 0; k < h.size(); ++k) {
    double w = 1.0;
    for (int64_t age = rebalances_ - h[k].period; age > 0; --age) w *= options_.smoothing;
    weight[k] = w;
    w_sum += w;
    x_mean += w * h[k].rows;
    t_mean += w * h[k].seconds;
  }
  if (!(w_sum > 0.0)) return {};
  x_mean /= w_sum;
  t_mean /= w_sum;
  double sxx = 0.0;
  double sxt = 0.0;
  for (size_t k = 0; k < h.size(); ++k) {
    const double dx = h[k].rows - x_mean;
    sxx += weight[k] * dx * dx;
    sxt += weight[k] * dx * (h[k].seconds - t_mean);
  }
  // Ridge towards the previous slope (seconds per row); the proportional
  // slope t / n before the first fit.
  const double prior = fitted_[worker] ? 1.0 / models_[worker].rows_per_s : t_mean / x_mean;
  const double ridge = kPriorSpread * kPriorSpread * w_sum * x_mean * x_mean;
  const double slope = (sxt + ridge * prior) / (sxx + ridge);
  // The line through the mean point, its intercept bounded: the marginal
  // cost stays positive.
  const double fixed_s = std::clamp(t_mean - slope * x_mean, 0.0, kMaxFixedFraction * t_mean);
  return {fixed_s, x_mean / (t_mean - fixed_s)};
}

void BatchBalancer::rebalance() {
  std::vector<WorkerCostModel> fits(models_.size());
  WorkerCostModel mean;
  int64_t measured = 0;
  for (size_t i = 0; i < fits.size(); ++i) {
    fits[i] = fit(i);
    if (fits[i].rows_per_s > 0.0) {
      mean.fixed_s += fits[i].fixed_s;
      mean.rows_per_s += fits[i].rows_per_s;
      ++measured;
    }
  }
  if (measured == 0) return;
  mean.fixed_s /= static_cast<double>(measured);
  mean.rows_per_s /= static_cast<double>(measured);
  for (size_t i = 0; i < fits.size(); ++i) {
    fitted_[i] = fits[i].rows_per_s > 0.0;
    models_[i] = fitted_[i] ? fits[i] : mean;
  }
  mode_ = Mode::kModel;
  if (reference_rows_ > 0.0) {
    shares_ = equalizing_shares(models_, reference_rows_, options_.min_share, options_.max_share);
  }
  ++rebalances_;
  // Keep the observations of the last history_periods periods.
  for (auto& h : history_) {
    while (!h.empty() && rebalances_ - h.front().period >= options_.history_periods) {
      h.pop_front();
    }
  }
}

void BatchBalancer::set_shares(std::span<const double> weights) {
  if (weights.size() != shares_.size()) {
    throw UsageError(
        fmt::format("batch balancer: {} shares for {} workers", weights.size(), shares_.size()));
  }
  for (double w : weights) {
    if (!(w >= 0.0) || !std::isfinite(w)) {
      throw UsageError(fmt::format("batch balancer: share {} is not a finite number >= 0", w));
    }
  }
  shares_ = bounded_shares(weights, options_.min_share, options_.max_share);
  std::fill(models_.begin(), models_.end(), WorkerCostModel{});
  std::fill(fitted_.begin(), fitted_.end(), false);
  mode_ = Mode::kShares;
}

std::vector<int64_t> BatchBalancer::split(int64_t batch_rows) const {
  if (batch_rows < 0) {
    throw UsageError(fmt::format("batch balancer: cannot split {} rows", batch_rows));
  }
  const int64_t w = workers();
  if (mode_ == Mode::kStatic || batch_rows == 0) return equal_split(batch_rows, w);
  const auto b = static_cast<double>(batch_rows);
  int64_t lo = static_cast<int64_t>(std::ceil(options_.min_share * b - 1e-9));
  int64_t hi = static_cast<int64_t>(std::floor(options_.max_share * b + 1e-9));
  if (w * lo > batch_rows || w * hi < batch_rows || lo > hi) {
    lo = 0;
    hi = batch_rows;
  }
  if (mode_ == Mode::kShares) return apportion(batch_rows, shares_, lo, hi);
  const std::vector<double> shares =
      equalizing_shares(models_, b, static_cast<double>(lo) / b, static_cast<double>(hi) / b);
  return apportion(batch_rows, shares, lo, hi);
}

}  // namespace dtrain::strategy
