// Learning-rate schedules as pure functions of the step: lr_at(step) is the
// learning rate for the update that follows `step` completed updates (step 0
// is the first update). Holding no state, a schedule resumed from a
// checkpoint gives exactly the values of an uninterrupted run; the caller
// does optimizer.set_lr(schedule.lr_at(step)) before each step().
//
//   ConstantLr(lr)                    lr
//   StepLr(lr, step_size, gamma)      lr * gamma^floor(step / step_size)
//   CosineAnnealingLr(lr, t_max, eta_min)
//       eta_min + (lr - eta_min) * (1 + cos(pi * step / t_max)) / 2 for
//       step < t_max, then eta_min (torch's closed form, held at its end
//       rather than rising again)
//   LinearWarmup(warmup_steps, after)
//       after.lr_at(0) * (step + 1) / warmup_steps for step < warmup_steps,
//       then after.lr_at(step - warmup_steps): the inner schedule starts its
//       own clock when the warm-up ends.
//
// Values are computed in double and rounded to float once.
// Thread safety: lr_at() is const and safe from any thread.
// Errors: UsageError for invalid arguments or a negative step;
// make_lr_schedule() throws ConfigError naming the "schedule.<key>".
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace dtrain::optim {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual float lr_at(int64_t step) const = 0;
};

class ConstantLr : public LrSchedule {
 public:
  explicit ConstantLr(float lr);
  float lr_at(int64_t step) const override;

 private:
  float lr_;
};

class StepLr : public LrSchedule {
 public:
  // step_size > 0, gamma >= 0.
  StepLr(float lr, int64_t step_size, float gamma);
  float lr_at(int64_t step) const override;

 private:
  float lr_;
  int64_t step_size_;
  float gamma_;
};

class CosineAnnealingLr : public LrSchedule {
 public:
  // t_max > 0.
  CosineAnnealingLr(float lr, int64_t t_max, float eta_min = 0.0f);
  float lr_at(int64_t step) const override;

 private:
  float lr_;
  int64_t t_max_;
  float eta_min_;
};

class LinearWarmup : public LrSchedule {
 public:
  // warmup_steps > 0; `after` non-null.
  LinearWarmup(int64_t warmup_steps, std::unique_ptr<LrSchedule> after);
  // Warm up to a constant lr.
  LinearWarmup(int64_t warmup_steps, float lr);
  float lr_at(int64_t step) const override;

 private:
  int64_t warmup_steps_;
  std::unique_ptr<LrSchedule> after_;
};

// The [schedule] table of a job file.
struct LrScheduleConfig {
  std::string type = "constant";  // constant | step | cosine
  int64_t warmup_steps = 0;       // > 0: LinearWarmup around `type`
  int64_t step_size = 1000;       // step: decay every step_size steps
  float gamma = 0.1f;             // step: the factor
  float eta_min = 0.0f;           // cosine: the final lr
  int64_t total_steps = 0;        // cosine: steps including warm-up; must exceed warmup_steps
};

// Builds the schedule from the base learning rate `lr` (optimizer.lr); with
// warmup_steps > 0 the inner schedule covers the remaining steps (cosine:
// t_max = total_steps - warmup_steps).
std::unique_ptr<LrSchedule> make_lr_schedule(const LrScheduleConfig& config, float lr);

}  // namespace dtrain::optim
