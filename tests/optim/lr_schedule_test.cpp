#include "optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numbers>
#include <string>

#include "core/error.h"
#include "nn/optimizer.h"

namespace dtrain::optim {
namespace {

TEST(LrSchedule, ConstantAndStep) {
  EXPECT_EQ(ConstantLr(0.3f).lr_at(0), 0.3f);
  EXPECT_EQ(ConstantLr(0.3f).lr_at(1000000), 0.3f);
  const StepLr step(0.1f, 10, 0.5f);
  EXPECT_EQ(step.lr_at(0), 0.1f);
  EXPECT_EQ(step.lr_at(9), 0.1f);
  EXPECT_EQ(step.lr_at(10), 0.05f);
  EXPECT_EQ(step.lr_at(25), 0.025f);
  EXPECT_EQ(step.lr_at(30), static_cast<float>(0.1 * 0.125));
}

TEST(LrSchedule, CosineAnnealsToEtaMinAndStaysThere) {
  const CosineAnnealingLr cosine(1.0f, 100, 0.1f);
  EXPECT_EQ(cosine.lr_at(0), 1.0f);
  EXPECT_FLOAT_EQ(cosine.lr_at(50), 0.55f);
  EXPECT_FLOAT_EQ(cosine.lr_at(25),
                  0.1f + 0.9f * (1.0f + std::cos(std::numbers::pi_v<float> / 4)) / 2);
  EXPECT_EQ(cosine.lr_at(100), 0.1f);
  EXPECT_EQ(cosine.lr_at(250), 0.1f);
  EXPECT_GT(cosine.lr_at(99), 0.1f);
}

TEST(LrSchedule, LinearWarmupRampsThenHandsOverWithItsOwnClock) {
  const LinearWarmup warmup(4, 0.2f);
  EXPECT_FLOAT_EQ(warmup.lr_at(0), 0.05f);
  EXPECT_FLOAT_EQ(warmup.lr_at(1), 0.1f);
  EXPECT_FLOAT_EQ(warmup.lr_at(3), 0.2f);
  EXPECT_EQ(warmup.lr_at(4), 0.2f);

  const LinearWarmup then_step(5, std::make_unique<StepLr>(1.0f, 10, 0.1f));
  EXPECT_FLOAT_EQ(then_step.lr_at(0), 0.2f);
  EXPECT_EQ(then_step.lr_at(14), 1.0f);        // inner step 9
  EXPECT_FLOAT_EQ(then_step.lr_at(15), 0.1f);  // inner step 10
}

TEST(LrSchedule, IsAPureFunctionOfTheStep) {
  // Resuming means asking for a later step first: the answers do not depend
  // on which steps were asked before.
  auto a = make_lr_schedule({.type = "cosine", .warmup_steps = 10, .total_steps = 110}, 0.5f);
  auto b = make_lr_schedule({.type = "cosine", .warmup_steps = 10, .total_steps = 110}, 0.5f);
  for (int64_t step = 0; step < 110; ++step) a->lr_at(step);
  for (int64_t step : {77, 3, 60, 109, 10}) EXPECT_EQ(a->lr_at(step), b->lr_at(step)) << step;
}

TEST(LrSchedule, FactoryBuildsWarmupAroundTheInnerSchedule) {
  auto cosine = make_lr_schedule({.type = "cosine", .warmup_steps = 4, .total_steps = 104}, 1.0f);
  EXPECT_FLOAT_EQ(cosine->lr_at(0), 0.25f);
  EXPECT_EQ(cosine->lr_at(4), 1.0f);
  EXPECT_FLOAT_EQ(cosine->lr_at(54), 0.5f);
  EXPECT_EQ(cosine->lr_at(104), 0.0f);

  auto step = make_lr_schedule({.type = "step", .step_size = 2, .gamma = 0.5f}, 0.1f);
  EXPECT_EQ(step->lr_at(3), 0.05f);
  auto constant = make_lr_schedule({}, 0.7f);
  EXPECT_EQ(constant->lr_at(12345), 0.7f);
}

template <class Fn>
void expect_config_error(Fn&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected ConfigError: " << message;
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(LrSchedule, InvalidConfigsNameTheKey) {
  expect_config_error([] { make_lr_schedule({.type = "linear"}, 0.1f); },
                      "schedule.type: unknown schedule 'linear' (expected constant, step or "
                      "cosine)");
  expect_config_error(
      [] { make_lr_schedule({.type = "cosine", .warmup_steps = 10, .total_steps = 10}, 0.1f); },
      "schedule.total_steps: 10 must exceed warmup_steps 10");
  expect_config_error([] { make_lr_schedule({.type = "step", .step_size = 0}, 0.1f); },
                      "schedule.step_size: 0 must be positive");
  expect_config_error([] { make_lr_schedule({.warmup_steps = -1}, 0.1f); },
                      "schedule.warmup_steps: -1 must be non-negative");
  EXPECT_THROW(StepLr(0.1f, 10, 0.5f).lr_at(-1), UsageError);
  EXPECT_THROW(CosineAnnealingLr(0.1f, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::optim
