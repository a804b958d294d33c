#include "strategy/compute_timer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "core/error.h"

namespace dtrain::strategy {

SlowdownTimer::SlowdownTimer(double factor) : factor_(factor) {
  if (!(factor >= 1.0) || !std::isfinite(factor)) {
    throw UsageError(fmt::format("slowdown must be a factor >= 1, got {}", factor));
  }
}

double SlowdownTimer::account(double measured_s, int64_t /*rows*/) {
  if (factor_ > 1.0 && measured_s > 0.0) {
    std::this_thread::sleep_for(std::chrono::duration<double>((factor_ - 1.0) * measured_s));
  }
  return factor_ * measured_s;
}

ModelledTimer::ModelledTimer(double fixed_s, double per_row_s)
    : fixed_s_(fixed_s), per_row_s_(per_row_s) {
  if (!(fixed_s >= 0.0) || !(per_row_s >= 0.0) || !std::isfinite(fixed_s) ||
      !std::isfinite(per_row_s)) {
    throw UsageError(
        fmt::format("modelled compute time: fixed {} s and per row {} s must be finite and >= 0",
                    fixed_s, per_row_s));
  }
}

double ModelledTimer::account(double /*measured_s*/, int64_t rows) {
  return fixed_s_ + per_row_s_ * static_cast<double>(rows);
}

}  // namespace dtrain::strategy
