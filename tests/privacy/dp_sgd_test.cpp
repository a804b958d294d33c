#include "privacy/dp_sgd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::privacy {
namespace {

TEST(ClipFactors, BoundEveryClippedNormAndLeaveSmallOnesAlone) {
  const double c = 1.0;
  std::vector<double> sq;
  Rng rng(1);
  for (int i = 0; i < 2000; ++i) {
    const double norm = std::exp(4.0 * (rng.uniform() - 0.5));  // 0.14 .. 7.4
    sq.push_back(norm * norm);
  }
  sq.push_back(0.0);
  sq.push_back(1.0);
  const std::vector<float> f = clip_factors(sq, c);
  ASSERT_EQ(f.size(), sq.size());
  double max_clipped = 0;
  for (size_t i = 0; i < sq.size(); ++i) {
    const double norm = std::sqrt(sq[i]);
    max_clipped = std::max(max_clipped, f[i] * norm);
    if (norm <= c)
      EXPECT_EQ(f[i], 1.0f) << i;
    else
      EXPECT_NEAR(f[i] * norm, c, 1e-6) << i;
  }
  EXPECT_LE(max_clipped, c * (1 + 1e-6));
}

TEST(ClipFactors, BadArgumentsAreUsageErrors) {
  const std::vector<double> ok = {1.0};
  EXPECT_THROW(clip_factors(ok, 0.0), UsageError);
  EXPECT_THROW(clip_factors(ok, -1.0), UsageError);
  const std::vector<double> bad = {NAN};
  EXPECT_THROW(clip_factors(bad, 1.0), UsageError);
}

TEST(GaussianNoise, HasTheRequestedScale) {
  // 200k draws: the sample variance's relative standard error is
  // sqrt(2 / n) = 0.3%; the bounds allow 5%, and the mean 20 standard errors.
  std::vector<float> v(200000, 3.0f);
  Rng rng(7);
  add_gaussian_noise(v, 2.5, rng);
  double mean = 0, var = 0;
  for (float x : v) mean += x - 3.0;
  mean /= double(v.size());
  for (float x : v) var += (x - 3.0 - mean) * (x - 3.0 - mean);
  var /= double(v.size() - 1);
  EXPECT_NEAR(mean, 0.0, 20 * 2.5 / std::sqrt(double(v.size())));
  EXPECT_NEAR(var, 2.5 * 2.5, 0.05 * 2.5 * 2.5);
}

TEST(GaussianNoise, IsReproducibleForASeedAndZeroScaleDrawsNothing) {
  std::vector<float> a(100, 0.0f), b(100, 0.0f);
  Rng ra(11), rb(11);
  add_gaussian_noise(a, 1.0, ra);
  add_gaussian_noise(b, 1.0, rb);
  EXPECT_EQ(a, b);
  Rng r0(11);
  const Rng::State before = r0.state();
  add_gaussian_noise(a, 0.0, r0);
  EXPECT_EQ(r0.state(), before);
  EXPECT_EQ(a, b);
  EXPECT_THROW(add_gaussian_noise(a, -1.0, r0), UsageError);
}

TEST(GaussianNoise, WorkerSharesAddUpToSigmaC) {
  const double per = noise_stddev_per_worker(1.1, 2.0, 4);
  EXPECT_DOUBLE_EQ(per * per * 4, 1.1 * 1.1 * 2.0 * 2.0);
  EXPECT_THROW(noise_stddev_per_worker(1.0, 1.0, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::privacy
