#include "strategy/compute_timer.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "testing/expect_error.h"

namespace dtrain::strategy {
namespace {

TEST(ComputeTimer, MeasuredPassesTheMeasurementOn) {
  MeasuredTimer t;
  EXPECT_EQ(t.account(0.25, 10), 0.25);
  EXPECT_EQ(t.account(0.0, 0), 0.0);
}

TEST(ComputeTimer, SlowdownReportsTheFactorTimesTheMeasurement) {
  SlowdownTimer none(1.0);
  EXPECT_EQ(none.account(0.5, 3), 0.5);
  SlowdownTimer slow(3.0);
  EXPECT_DOUBLE_EQ(slow.account(1e-4, 3), 3e-4);  // and slept 2e-4 s
  EXPECT_EQ(slow.account(0.0, 0), 0.0);
}

TEST(ComputeTimer, SlowdownBelowOneOrNotFiniteIsRefused) {
  dtrain::testing::expect_error<UsageError>([] { SlowdownTimer(0.5); },
                                            "slowdown must be a factor >= 1, got 0.5");
  EXPECT_THROW(SlowdownTimer(std::numeric_limits<double>::infinity()), UsageError);
  EXPECT_THROW(SlowdownTimer(std::numeric_limits<double>::quiet_NaN()), UsageError);
}

TEST(ComputeTimer, ModelledIgnoresTheMeasurement) {
  ModelledTimer t(0.01, 0.001);
  EXPECT_DOUBLE_EQ(t.account(123.0, 10), 0.02);
  EXPECT_DOUBLE_EQ(t.account(0.0, 0), 0.01);
  EXPECT_THROW(ModelledTimer(-1.0, 0.0), UsageError);
  EXPECT_THROW(ModelledTimer(0.0, std::numeric_limits<double>::infinity()), UsageError);
}

}  // namespace
}  // namespace dtrain::strategy
