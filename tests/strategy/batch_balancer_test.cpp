// BatchBalancer: splits converge to the time-equalising split of synthetic
// measurements, proportional (time ~ rows) and affine (a fixed cost per step
// plus a cost per row); bounds hold, integer splits sum to the batch,
// everything is deterministic; and the bounded_shares / equalizing_shares /
// apportion building blocks.
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

// One synthetic update: worker i needs (fixed_s + rows_i * per_row_s_i)
// seconds, times noise in [-5%, +5%] from a fixed seed.
struct Measurement {
  std::vector<double> rows;
  std::vector<double> seconds;
};
Measurement measure(const std::vector<int64_t>& rows, double fixed_s,
                    const std::vector<double>& per_row_s, Rng& rng) {
  Measurement m{std::vector<double>(rows.size(), 0.0), std::vector<double>(rows.size(), 0.0)};
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] == 0) continue;
    const double noise = 1.0 + 0.1 * (rng.uniform() - 0.5);
    m.rows[i] = static_cast<double>(rows[i]);
    m.seconds[i] = (fixed_s + m.rows[i] * per_row_s[i]) * noise;
  }
  return m;
}

bool observe(BatchBalancer& balancer, const Measurement& m) {
  return balancer.observe(m.rows, m.seconds);
}

// Runs `updates` synthetic updates of a global batch of `batch` rows.
void run(BatchBalancer& balancer, int64_t batch, int updates, double fixed_s,
         const std::vector<double>& per_row_s, uint64_t seed) {
  Rng rng(seed);
  for (int step = 0; step < updates; ++step) {
    const std::vector<int64_t> rows = balancer.split(batch);
    ASSERT_EQ(sum(rows), batch);
    observe(balancer, measure(rows, fixed_s, per_row_s, rng));
  }
}

TEST(BatchBalancer, DisabledOrUnchangedGivesTheStaticSplit) {
  BatchBalancer off(4, {});
  EXPECT_EQ(off.split(10), (std::vector<int64_t>{2, 3, 2, 3}));  // [10 r / 4, 10 (r + 1) / 4)
  EXPECT_FALSE(off.observe(std::vector<double>{2, 3, 2, 3}, std::vector<double>{1, 1, 1, 9}));
  EXPECT_EQ(off.split(10), (std::vector<int64_t>{2, 3, 2, 3}));
  BatchBalancer on(4, enabled());
  EXPECT_EQ(on.split(10), (std::vector<int64_t>{2, 3, 2, 3}));
  EXPECT_EQ(on.split(0), (std::vector<int64_t>{0, 0, 0, 0}));
}

TEST(BatchBalancer, ProportionalCostsConvergeToOneThirdForAWorkerThreeTimesSlower) {
  const std::vector<double> cost{1e-3, 1e-3, 1e-3, 3e-3};  // worker 3 three times slower
  BatchBalancer balancer(4, enabled(5, 0.5));
  const int64_t batch = 1000;
  run(balancer, batch, 60, 0.0, cost, 7);
  EXPECT_EQ(balancer.rebalances(), 12);
  // Expected shares 3:3:3:1 of the batch: 0.3, 0.3, 0.3, 0.1 (within noise).
  const std::vector<double>& shares = balancer.shares();
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(shares[static_cast<size_t>(i)], 0.3, 0.015) << i;
  EXPECT_NEAR(shares[3], 0.1, 0.01);
  const std::vector<int64_t> rows = balancer.split(batch);
  EXPECT_EQ(sum(rows), batch);
  EXPECT_NEAR(static_cast<double>(rows[3]) / static_cast<double>(rows[0]), 1.0 / 3.0, 0.05);
}

// The affine case of issue 7: a = 2 ms per step on every worker, b three
// times larger on worker 3. Equal times T = a + b_i n_i with sum n_i = B:
// n_i = (T - a) / b_i, so n_i is proportional to 1 / b_i (3 : 3 : 3 : 1) --
// the same a everywhere cancels. The proportional model sees worker 3's
// rate n / (a + b n) fall as its share falls: each re-balancing closes only
// a fraction b n / (a + b n) of its error (here about a quarter), and under
// noise the share wanders, down to min_share. The affine fit is there after
// its second re-balancing (the first has one row count per worker).
TEST(BatchBalancer, AffineCostsConvergeQuicklyToTheTimeEqualisingSplit) {
  const double fixed_s = 2e-3;
  const std::vector<double> per_row_s{20e-6, 20e-6, 20e-6, 60e-6};
  BatchBalancer balancer(4, enabled(5, 0.5));
  const int64_t batch = 128;
  run(balancer, batch, 25, fixed_s, per_row_s, 5);
  ASSERT_EQ(balancer.rebalances(), 5);
  const std::vector<int64_t> rows = balancer.split(batch);
  EXPECT_NEAR(static_cast<double>(rows[3]), 12.8, 1.5) << rows[0] << " " << rows[3];
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(static_cast<double>(rows[size_t(i)]), 38.4, 1.5) << i;
  // The fitted lines learned a fixed cost, and they predict the true step
  // time at each worker's rows (the lines need not match elsewhere: once the
  // rows stop moving there is nothing more to learn about the slope).
  for (size_t i = 0; i < 4; ++i) {
    const WorkerCostModel& m = balancer.models()[i];
    EXPECT_GT(m.fixed_s, 0.0) << i;
    const auto n = static_cast<double>(rows[i]);
    EXPECT_NEAR(m.fixed_s + n / m.rows_per_s, fixed_s + n * per_row_s[i], 0.15e-3) << i;
  }
}

// A fixed cost that differs per worker: the split is no longer the rate
// ratio; it is the one that equalises a_i + b_i n_i (solved here in closed
// form for two workers: n_0 + n_1 = B, a_0 + b_0 n_0 = a_1 + b_1 n_1).
TEST(BatchBalancer, AffineCostsWithUnequalFixedCostsEqualiseTheTimes) {
  BatchBalancer balancer(2, enabled(4, 0.5));
  const int64_t batch = 200;
  const double a0 = 1e-3;
  const double b0 = 10e-6;
  const double a1 = 2e-3;
  const double b1 = 20e-6;
  Rng rng(9);
  for (int step = 0; step < 200; ++step) {
    const std::vector<int64_t> rows = balancer.split(batch);
    const double noise0 = 1.0 + 0.1 * (rng.uniform() - 0.5);
    const double noise1 = 1.0 + 0.1 * (rng.uniform() - 0.5);
    balancer.observe(std::vector<double>{double(rows[0]), double(rows[1])},
                     std::vector<double>{(a0 + b0 * double(rows[0])) * noise0,
                                         (a1 + b1 * double(rows[1])) * noise1});
  }
  const double n0 = (a1 - a0 + b1 * double(batch)) / (b0 + b1);  // 166.7
  const std::vector<int64_t> rows = balancer.split(batch);
  EXPECT_NEAR(static_cast<double>(rows[0]), n0, 6.0) << rows[0] << " " << rows[1];
}

TEST(BatchBalancer, SplitRecomputesTheEqualisingSplitForEachBatchSize) {
  // Exact lines, no noise: worker 0 costs 1 ms + 10 us/row, worker 1 10 us/row.
  const std::vector<WorkerCostModel> models{{1e-3, 1e5}, {0.0, 1e5}};
  // equalizing_shares directly: n_0 = (B - 100) / 2, n_1 = (B + 100) / 2.
  const std::vector<double> at_300 = equalizing_shares(models, 300, 0.0, 1.0);
  EXPECT_NEAR(at_300[0], 100.0 / 300.0, 1e-9);
  EXPECT_NEAR(at_300[1], 200.0 / 300.0, 1e-9);
  const std::vector<double> at_50 = equalizing_shares(models, 50, 0.0, 1.0);  // T < 1 ms
  EXPECT_NEAR(at_50[0], 0.0, 1e-12);
  EXPECT_NEAR(at_50[1], 1.0, 1e-12);
  const std::vector<double> bounded = equalizing_shares(models, 50, 0.1, 1.0);
  EXPECT_NEAR(bounded[0], 0.1, 1e-12);
  EXPECT_NEAR(bounded[1], 0.9, 1e-12);
  // Equal lines: equal shares, whatever the fixed cost.
  const std::vector<WorkerCostModel> same{{5e-3, 2e4}, {5e-3, 2e4}, {5e-3, 2e4}};
  for (double share : equalizing_shares(same, 7, 0.0, 1.0)) EXPECT_NEAR(share, 1.0 / 3.0, 1e-12);
  // Through the balancer: two row counts per worker give the lines; the
  // ridge towards the previous slope fades over repeated fits.
  BatchBalancer balancer(2, enabled(2, 0.5));
  for (int i = 0; i < 20; ++i) {
    balancer.observe(std::vector<double>{100, 100}, std::vector<double>{2e-3, 1e-3});
    balancer.observe(std::vector<double>{200, 200}, std::vector<double>{3e-3, 2e-3});
  }
  EXPECT_NEAR(balancer.models()[0].fixed_s, 1e-3, 1e-9);
  EXPECT_NEAR(balancer.models()[1].fixed_s, 0.0, 1e-9);
  EXPECT_EQ(balancer.split(300), (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(balancer.split(500), (std::vector<int64_t>{200, 300}));
  EXPECT_EQ(balancer.split(100), (std::vector<int64_t>{1, 99}));  // min_share 0.01
}

TEST(BatchBalancer, BoundsHoldWhenTheRatesWouldLeaveThem) {
  BatchBalancerOptions o = enabled(1, 0.0);
  o.min_share = 0.1;
  o.max_share = 0.5;
  BatchBalancer balancer(4, o);
  // One row count each: the proportional model; worker 0 100x faster.
  balancer.observe(std::vector<double>{100, 100, 100, 100}, std::vector<double>{0.1, 10, 10, 100});
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

TEST(BatchBalancer, OneRowCountIsTheProportionalModelAndUnmeasuredUpdatesRecordNothing) {
  BatchBalancer balancer(2, enabled(2, 0.5));
  EXPECT_FALSE(balancer.observe(std::vector<double>{4, 4}, std::vector<double>{0.04, 0.08}));
  EXPECT_EQ(balancer.rebalances(), 0);
  // Worker 1 had no rows: nothing recorded for it.
  EXPECT_TRUE(balancer.observe(std::vector<double>{4, 0}, std::vector<double>{0.02, 0}));
  // Worker 0: 4 rows in 0.04 s and 0.02 s, mean 0.03 s: 133.3 rows/s;
  // worker 1: 50 rows/s; no fixed cost without two row counts.
  EXPECT_NEAR(balancer.models()[0].rows_per_s, 4.0 / 0.03, 1e-9);
  EXPECT_NEAR(balancer.models()[1].rows_per_s, 50.0, 1e-9);
  EXPECT_NEAR(balancer.models()[0].fixed_s, 0.0, 1e-15);
  EXPECT_NEAR(balancer.shares()[0], (4.0 / 0.03) / (4.0 / 0.03 + 50.0), 1e-12);
  EXPECT_EQ(balancer.split(8), (std::vector<int64_t>{6, 2}));
  balancer.reset();
  EXPECT_EQ(balancer.split(8), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(balancer.models()[0].rows_per_s, 0.0);
}

TEST(BatchBalancer, WorkerNeverMeasuredGetsTheMeanModel) {
  BatchBalancer balancer(3, enabled(1, 0.0));
  balancer.observe(std::vector<double>{100, 300, 0}, std::vector<double>{1, 1, 0});
  EXPECT_NEAR(balancer.models()[2].rows_per_s, 200.0, 1e-9);
  EXPECT_NEAR(balancer.shares()[2], 200.0 / 600.0, 1e-12);
}

TEST(BatchBalancer, SameObservationsGiveIdenticalSplitsOnEveryWorker) {
  // Two balancers stand for two workers: bitwise the same answers, while
  // the affine fits move the split every third update.
  BatchBalancer a(5, enabled(3, 0.7));
  BatchBalancer b(5, enabled(3, 0.7));
  Rng rng(11);
  const std::vector<double> per_row_s{1e-5, 2e-5, 3e-5, 1e-5, 5e-5};
  for (int step = 0; step < 30; ++step) {
    const Measurement m = measure(a.split(128), 1e-3, per_row_s, rng);
    EXPECT_EQ(observe(a, m), observe(b, m));
    EXPECT_EQ(a.shares(), b.shares());
    for (size_t i = 0; i < 5; ++i) {
      EXPECT_EQ(a.models()[i].fixed_s, b.models()[i].fixed_s);
      EXPECT_EQ(a.models()[i].rows_per_s, b.models()[i].rows_per_s);
    }
    for (int64_t batch : {1, 17, 128}) EXPECT_EQ(a.split(batch), b.split(batch));
  }
  EXPECT_EQ(a.rebalances(), 10);
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
  o = enabled();
  o.history_periods = 0;
  EXPECT_THROW(BatchBalancer(2, o), UsageError);
  BatchBalancer balancer(2, enabled());
  EXPECT_THROW(balancer.observe(std::vector<double>{1, 2, 3}, std::vector<double>{1, 2, 3}),
               UsageError);
  EXPECT_THROW(balancer.observe(std::vector<double>{1, 2}, std::vector<double>{1}), UsageError);
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
