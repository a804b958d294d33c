// BatchBalancer: shares converge to the throughput ratios of synthetic
// measurements, bounds hold, integer splits sum to the batch, everything is
// deterministic; and the bounded_shares / apportion building blocks.
#include "strategy/batch_balancer.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::strategy {
namespace {

int64_t sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

BatchBalancerOptions enabled(int64_t every = 5, double smoothing = 0.5) {
  BatchBalancerOptions o;
  o.enabled = true;
  o.rebalance_every = every;
  o.smoothing = smoothing;
  return o;
}

// Synthetic step: worker i needs rows_i * cost_i seconds (cost = seconds per
// row), plus noise in [-5%, +5%] from a fixed seed.
std::vector<double> measure(const std::vector<int64_t>& rows, const std::vector<double>& cost,
                            Rng& rng) {
  std::vector<double> rates(rows.size(), 0.0);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] == 0) continue;
    const double noise = 1.0 + 0.1 * (rng.uniform() - 0.5);
    rates[i] = static_cast<double>(rows[i]) / (static_cast<double>(rows[i]) * cost[i] * noise);
  }
  return rates;
}

TEST(BatchBalancer, DisabledOrUnchangedGivesTheStaticSplit) {
  BatchBalancer off(4, {});
  EXPECT_EQ(off.split(10), (std::vector<int64_t>{2, 3, 2, 3}));  // [10 r / 4, 10 (r + 1) / 4)
  EXPECT_FALSE(off.observe(std::vector<double>{1, 1, 1, 0.1}));
  EXPECT_EQ(off.split(10), (std::vector<int64_t>{2, 3, 2, 3}));
  BatchBalancer on(4, enabled());
  EXPECT_EQ(on.split(10), (std::vector<int64_t>{2, 3, 2, 3}));
  EXPECT_EQ(on.split(0), (std::vector<int64_t>{0, 0, 0, 0}));
}

TEST(BatchBalancer, WorkerThreeTimesSlowerConvergesToOneThirdOfTheOthers) {
  const std::vector<double> cost{1e-3, 1e-3, 1e-3, 3e-3};  // worker 3 three times slower
  BatchBalancer balancer(4, enabled(5, 0.5));
  Rng rng(7);
  const int64_t batch = 1000;
  for (int step = 0; step < 60; ++step) {
    const std::vector<int64_t> rows = balancer.split(batch);
    ASSERT_EQ(sum(rows), batch);
    balancer.observe(measure(rows, cost, rng));
  }
  EXPECT_EQ(balancer.rebalances(), 12);
  // Expected shares 3:3:3:1 of the batch: 0.3, 0.3, 0.3, 0.1 (within noise).
  const std::vector<double>& shares = balancer.shares();
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(shares[static_cast<size_t>(i)], 0.3, 0.015) << i;
  EXPECT_NEAR(shares[3], 0.1, 0.01);
  const std::vector<int64_t> rows = balancer.split(batch);
  EXPECT_EQ(sum(rows), batch);
  EXPECT_NEAR(static_cast<double>(rows[3]) / static_cast<double>(rows[0]), 1.0 / 3.0, 0.05);
}

TEST(BatchBalancer, BoundsHoldWhenTheRatesWouldLeaveThem) {
  BatchBalancerOptions o = enabled(1, 0.0);
  o.min_share = 0.1;
  o.max_share = 0.5;
  BatchBalancer balancer(4, o);
  balancer.observe(std::vector<double>{1000, 10, 10, 1});  // worker 0 100x faster
  const std::vector<double>& shares = balancer.shares();
  EXPECT_DOUBLE_EQ(shares[0], 0.5);
  EXPECT_NEAR(shares[3], 0.1, 1e-12);
  EXPECT_NEAR(std::accumulate(shares.begin(), shares.end(), 0.0), 1.0, 1e-12);
  // Workers 1 and 2 are equally fast: they split what the bounds leave.
  EXPECT_NEAR(shares[1], 0.2, 1e-12);
  EXPECT_NEAR(shares[2], 0.2, 1e-12);
  for (int64_t batch : {0, 1, 3, 4, 7, 10, 128, 1001}) {
    const std::vector<int64_t> rows = balancer.split(batch);
    EXPECT_EQ(sum(rows), batch) << batch;
    if (batch >= 40) {  // room for the bounds: ceil(0.1 B) .. floor(0.5 B)
      for (int64_t r : rows) {
        EXPECT_GE(r, (batch + 9) / 10) << batch;
        EXPECT_LE(r, batch / 2) << batch;
      }
    }
  }
}

TEST(BatchBalancer, SmoothingAveragesAndUnmeasuredWorkersKeepTheirEstimate) {
  BatchBalancer balancer(2, enabled(2, 0.5));
  EXPECT_FALSE(balancer.observe(std::vector<double>{100, 50}));
  EXPECT_EQ(balancer.samples_per_s(), (std::vector<double>{100, 50}));
  EXPECT_TRUE(balancer.observe(std::vector<double>{200, 0}));  // worker 1 had no rows
  EXPECT_EQ(balancer.samples_per_s(), (std::vector<double>{150, 50}));
  EXPECT_NEAR(balancer.shares()[0], 0.75, 1e-12);
  EXPECT_EQ(balancer.split(8), (std::vector<int64_t>{6, 2}));
  balancer.reset();
  EXPECT_EQ(balancer.split(8), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(balancer.samples_per_s(), (std::vector<double>{0, 0}));
}

TEST(BatchBalancer, WorkerNeverMeasuredGetsTheMeanRate) {
  BatchBalancer balancer(3, enabled(1, 0.0));
  balancer.observe(std::vector<double>{100, 300, 0});
  EXPECT_NEAR(balancer.shares()[2], 200.0 / 600.0, 1e-12);
}

TEST(BatchBalancer, SameObservationsGiveIdenticalSplitsOnEveryWorker) {
  // Two balancers stand for two workers: bitwise the same answers.
  BatchBalancer a(5, enabled(3, 0.7));
  BatchBalancer b(5, enabled(3, 0.7));
  Rng rng(11);
  for (int step = 0; step < 30; ++step) {
    std::vector<double> rates(5);
    for (double& r : rates) r = 10.0 + 1000.0 * rng.uniform();
    EXPECT_EQ(a.observe(rates), b.observe(rates));
    EXPECT_EQ(a.shares(), b.shares());
    for (int64_t batch : {1, 17, 128}) EXPECT_EQ(a.split(batch), b.split(batch));
  }
}

TEST(BatchBalancer, SetSharesForcesASplit) {
  BatchBalancer balancer(3, {});
  balancer.set_shares(std::vector<double>{1, 2, 1});
  EXPECT_EQ(balancer.split(8), (std::vector<int64_t>{2, 4, 2}));
  // 2.25, 4.5, 2.25: the left-over row goes to the largest remainder.
  EXPECT_EQ(balancer.split(9), (std::vector<int64_t>{2, 5, 2}));
}

TEST(BatchBalancer, RejectsBadOptionsAndInputs) {
  BatchBalancerOptions o = enabled();
  EXPECT_THROW(BatchBalancer(0, o), UsageError);
  o.rebalance_every = 0;
  EXPECT_THROW(BatchBalancer(2, o), UsageError);
  o = enabled();
  o.smoothing = 1.0;
  EXPECT_THROW(BatchBalancer(2, o), UsageError);
  o = enabled();
  o.min_share = 0.3;  // 4 x 0.3 > 1
  EXPECT_THROW(BatchBalancer(4, o), UsageError);
  o = enabled();
  o.max_share = 0.2;  // 4 x 0.2 < 1
  EXPECT_THROW(BatchBalancer(4, o), UsageError);
  BatchBalancer balancer(2, enabled());
  EXPECT_THROW(balancer.observe(std::vector<double>{1, 2, 3}), UsageError);
  EXPECT_THROW(balancer.set_shares(std::vector<double>{1, -1}), UsageError);
  EXPECT_THROW(balancer.split(-1), UsageError);
}

TEST(Apportion, SumsToTheTotalWithinBoundsAndTiesGoToTheLowerIndex) {
  EXPECT_EQ(apportion(3, std::vector<double>{0.25, 0.5, 0.25}, 0, 3),
            (std::vector<int64_t>{1, 1, 1}));  // 0.75, 1.5, 0.75: remainders 0.75 first, index 0
  EXPECT_EQ(apportion(10, std::vector<double>{0.9, 0.05, 0.05}, 2, 10),
            (std::vector<int64_t>{6, 2, 2}));
  EXPECT_EQ(apportion(0, std::vector<double>{0.5, 0.5}, 0, 0), (std::vector<int64_t>{0, 0}));
  Rng rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = 1 + rng.below(6);
    std::vector<double> w(n);
    for (double& x : w) x = rng.uniform();
    const std::vector<double> shares = bounded_shares(w, 0.0, 1.0);
    const auto total = static_cast<int64_t>(rng.below(500));
    const std::vector<int64_t> rows = apportion(total, shares, 0, total);
    EXPECT_EQ(sum(rows), total);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_LE(std::abs(static_cast<double>(rows[i]) - shares[i] * static_cast<double>(total)),
                1.0);
    }
  }
}

TEST(BoundedShares, ProportionalInsideTheBoundsAndEqualForZeroWeights) {
  const std::vector<double> s = bounded_shares(std::vector<double>{1, 1, 2}, 0.0, 1.0);
  EXPECT_NEAR(s[0], 0.25, 1e-12);
  EXPECT_NEAR(s[2], 0.5, 1e-12);
  EXPECT_EQ(bounded_shares(std::vector<double>{0, 0}, 0.0, 1.0), (std::vector<double>{0.5, 0.5}));
  const std::vector<double> clamped = bounded_shares(std::vector<double>{1, 0, 0}, 0.2, 1.0);
  EXPECT_NEAR(clamped[0], 0.6, 1e-12);
  EXPECT_NEAR(clamped[1], 0.2, 1e-12);
}

}  // namespace
}  // namespace dtrain::strategy
