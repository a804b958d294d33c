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

BatchBalancer::BatchBalancer(int64_t workers, BatchBalancerOptions options) : options_(options) {
  if (workers < 1) throw UsageError(fmt::format("batch balancer: {} workers < 1", workers));
  if (options_.rebalance_every < 1) {
    throw UsageError(fmt::format("batch balancer: rebalance_every must be at least 1, got {}",
                                 options_.rebalance_every));
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
  shares_.assign(static_cast<size_t>(workers), 1.0 / w);
  rates_.assign(static_cast<size_t>(workers), 0.0);
}

void BatchBalancer::reset() {
  std::fill(shares_.begin(), shares_.end(), 1.0 / static_cast<double>(shares_.size()));
  std::fill(rates_.begin(), rates_.end(), 0.0);
  observations_ = 0;
  rebalances_ = 0;
  equal_ = true;
}

bool BatchBalancer::observe(std::span<const double> samples_per_s) {
  if (samples_per_s.size() != shares_.size()) {
    throw UsageError(fmt::format("batch balancer: {} measurements for {} workers",
                                 samples_per_s.size(), shares_.size()));
  }
  if (!options_.enabled) return false;
  for (size_t i = 0; i < rates_.size(); ++i) {
    const double m = samples_per_s[i];
    if (!(m > 0.0) || !std::isfinite(m)) continue;
    rates_[i] =
        rates_[i] > 0.0 ? options_.smoothing * rates_[i] + (1.0 - options_.smoothing) * m : m;
  }
  if (++observations_ % options_.rebalance_every != 0) return false;
  rebalance();
  return true;
}

void BatchBalancer::rebalance() {
  double known = 0.0;
  int64_t measured = 0;
  for (double r : rates_) {
    if (r > 0.0) {
      known += r;
      ++measured;
    }
  }
  if (measured == 0) return;
  const double fill = known / static_cast<double>(measured);
  std::vector<double> weights(rates_.size());
  for (size_t i = 0; i < rates_.size(); ++i) weights[i] = rates_[i] > 0.0 ? rates_[i] : fill;
  shares_ = bounded_shares(weights, options_.min_share, options_.max_share);
  equal_ = false;
  ++rebalances_;
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
  equal_ = false;
}

std::vector<int64_t> BatchBalancer::split(int64_t batch_rows) const {
  if (batch_rows < 0) {
    throw UsageError(fmt::format("batch balancer: cannot split {} rows", batch_rows));
  }
  const int64_t w = workers();
  if (equal_) return equal_split(batch_rows, w);
  const auto b = static_cast<double>(batch_rows);
  int64_t lo = static_cast<int64_t>(std::ceil(options_.min_share * b - 1e-9));
  int64_t hi = static_cast<int64_t>(std::floor(options_.max_share * b + 1e-9));
  if (w * lo > batch_rows || w * hi < batch_rows || lo > hi) {
    lo = 0;
    hi = batch_rows;
  }
  return apportion(batch_rows, shares_, lo, hi);
}

}  // namespace dtrain::strategy
