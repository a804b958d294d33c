#include "optim/lr_schedule.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dtrain::optim {

namespace {

void check_step(int64_t step, const char* schedule) {
  if (step < 0) throw UsageError(fmt::format("{}: step {} is negative", schedule, step));
}

void check_lr(float lr, const char* schedule) {
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    throw UsageError(
        fmt::format("{}: learning rate {} must be finite and non-negative", schedule, lr));
  }
}

}  // namespace

ConstantLr::ConstantLr(float lr) : lr_(lr) { check_lr(lr, "constant schedule"); }

float ConstantLr::lr_at(int64_t step) const {
  check_step(step, "constant schedule");
  return lr_;
}

StepLr::StepLr(float lr, int64_t step_size, float gamma)
    : lr_(lr), step_size_(step_size), gamma_(gamma) {
  check_lr(lr, "step schedule");
  if (step_size <= 0 || !(gamma >= 0.0f)) {
    throw UsageError(
        fmt::format("step schedule: step_size {} must be positive and gamma {} non-negative",
                    step_size, gamma));
  }
}

float StepLr::lr_at(int64_t step) const {
  check_step(step, "step schedule");
  const auto decays = static_cast<double>(step / step_size_);
  return static_cast<float>(double{lr_} * std::pow(double{gamma_}, decays));
}

CosineAnnealingLr::CosineAnnealingLr(float lr, int64_t t_max, float eta_min)
    : lr_(lr), t_max_(t_max), eta_min_(eta_min) {
  check_lr(lr, "cosine schedule");
  check_lr(eta_min, "cosine schedule");
  if (t_max <= 0)
    throw UsageError(fmt::format("cosine schedule: t_max {} must be positive", t_max));
}

float CosineAnnealingLr::lr_at(int64_t step) const {
  check_step(step, "cosine schedule");
  if (step >= t_max_) return eta_min_;
  const double progress = static_cast<double>(step) / static_cast<double>(t_max_);
  const double cosine = (1.0 + std::cos(std::numbers::pi * progress)) / 2.0;
  return static_cast<float>(double{eta_min_} + (double{lr_} - double{eta_min_}) * cosine);
}

LinearWarmup::LinearWarmup(int64_t warmup_steps, std::unique_ptr<LrSchedule> after)
    : warmup_steps_(warmup_steps), after_(std::move(after)) {
  if (warmup_steps <= 0 || after_ == nullptr) {
    throw UsageError(fmt::format(
        "linear warm-up: warmup_steps {} must be positive and the schedule after it given",
        warmup_steps));
  }
}

LinearWarmup::LinearWarmup(int64_t warmup_steps, float lr)
    : LinearWarmup(warmup_steps, std::make_unique<ConstantLr>(lr)) {}

float LinearWarmup::lr_at(int64_t step) const {
  check_step(step, "linear warm-up");
  if (step >= warmup_steps_) return after_->lr_at(step - warmup_steps_);
  const double target = after_->lr_at(0);
  return static_cast<float>(target * static_cast<double>(step + 1) /
                            static_cast<double>(warmup_steps_));
}

std::unique_ptr<LrSchedule> make_lr_schedule(const LrScheduleConfig& config, float lr) {
  auto require = [](bool ok, const char* key, const std::string& problem) {
    if (!ok) throw ConfigError(fmt::format("schedule.{}: {}", key, problem));
  };
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    throw ConfigError(fmt::format("optimizer.lr: {} must be finite and non-negative", lr));
  }
  require(config.warmup_steps >= 0, "warmup_steps",
          fmt::format("{} must be non-negative", config.warmup_steps));
  std::unique_ptr<LrSchedule> inner;
  if (config.type == "constant") {
    inner = std::make_unique<ConstantLr>(lr);
  } else if (config.type == "step") {
    require(config.step_size > 0, "step_size",
            fmt::format("{} must be positive", config.step_size));
    require(config.gamma >= 0.0f, "gamma", fmt::format("{} must be non-negative", config.gamma));
    inner = std::make_unique<StepLr>(lr, config.step_size, config.gamma);
  } else if (config.type == "cosine") {
    require(config.total_steps > config.warmup_steps, "total_steps",
            fmt::format("{} must exceed warmup_steps {}", config.total_steps, config.warmup_steps));
    require(config.eta_min >= 0.0f && std::isfinite(config.eta_min), "eta_min",
            fmt::format("{} must be finite and non-negative", config.eta_min));
    inner = std::make_unique<CosineAnnealingLr>(lr, config.total_steps - config.warmup_steps,
                                                config.eta_min);
  } else {
    require(false, "type",
            fmt::format("unknown schedule '{}' (expected constant, step or cosine)", config.type));
  }
  if (config.warmup_steps == 0) return inner;
  return std::make_unique<LinearWarmup>(config.warmup_steps, std::move(inner));
}

}  // namespace dtrain::optim
