#include "data/poisson_sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace dtrain::data {
namespace {

TEST(PoissonSampler, BatchSizesAverageQN) {
  const int64_t n = 10000;
  const double q = 0.02;  // expected 200 per batch
  PoissonSampler sampler(n, q, 42);
  EXPECT_DOUBLE_EQ(sampler.expected_batch_size(), 200.0);
  const int steps = 200;
  double total = 0, total_sq = 0;
  std::vector<int64_t> hits(static_cast<size_t>(n), 0);
  for (int s = 0; s < steps; ++s) {
    const std::vector<int64_t> b = sampler.batch(s);
    EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
    EXPECT_TRUE(std::adjacent_find(b.begin(), b.end()) == b.end());
    for (int64_t i : b) ++hits[static_cast<size_t>(i)];
    total += double(b.size());
    total_sq += double(b.size()) * double(b.size());
  }
  // Batch size ~ Binomial(n, q): mean 200, sd 14; the mean of 200 batches
  // has sd 1; allow 10 of them. The variance q(1-q)n = 196 within 50%.
  const double mean = total / steps;
  EXPECT_NEAR(mean, 200.0, 10.0);
  const double var = total_sq / steps - mean * mean;
  EXPECT_NEAR(var, 196.0, 98.0);
  // Every example is equally likely: the first and second halves of the
  // index range get the same share within 5% (each ~20000 hits, sd 141).
  double lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) (i < n / 2 ? lo : hi) += double(hits[static_cast<size_t>(i)]);
  EXPECT_NEAR(lo / hi, 1.0, 0.05);
}

TEST(PoissonSampler, IsReproducibleAndStepsDiffer) {
  PoissonSampler a(1000, 0.1, 7), b(1000, 0.1, 7), c(1000, 0.1, 8);
  EXPECT_EQ(a.batch(5), b.batch(5));
  EXPECT_NE(a.batch(5), a.batch(6));
  EXPECT_NE(a.batch(5), c.batch(5));
}

TEST(PoissonSampler, EdgeRatesAndEmptyBatches) {
  EXPECT_TRUE(PoissonSampler(100, 0.0, 1).batch(0).empty());
  EXPECT_EQ(PoissonSampler(100, 1.0, 1).batch(3).size(), 100u);
  EXPECT_TRUE(PoissonSampler(0, 0.5, 1).batch(0).empty());
  // q N = 0.01: most batches are empty.
  PoissonSampler tiny(10, 0.001, 3);
  int empty = 0;
  for (int s = 0; s < 100; ++s) empty += tiny.batch(s).empty() ? 1 : 0;
  EXPECT_GT(empty, 80);
  EXPECT_THROW(PoissonSampler(10, 1.5, 1), UsageError);
  EXPECT_THROW(PoissonSampler(10, -0.1, 1), UsageError);
  EXPECT_THROW(PoissonSampler(-1, 0.1, 1), UsageError);
}

}  // namespace
}  // namespace dtrain::data
