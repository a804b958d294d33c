// ComputeTimer: what a strategy counts as the compute time of one call's
// forward and backward. A strategy measures that time itself (steady clock)
// and passes the measurement, with the call's rows, through the timer it was
// given; the seconds returned are what it reports (dynamic batch sizing fits
// each worker's step-time model to them, docs/allreduce-strategy.md).
//
// The default timer passes the measurement on. The others emulate machines
// other than this one, and are installed once, where the job is assembled
// (Strategy::set_compute_timer), never threaded through the strategies:
//  - SlowdownTimer(f): a node f times slower (`--slowdown RANK=FACTOR`, for
//    benchmarks and tests): sleeps (f - 1) x the measurement and returns
//    f x the measurement.
//  - ModelledTimer(fixed, per_row): a node whose calls take exactly
//    fixed + per_row x rows seconds: returns that without sleeping, so that a
//    test asserts what dynamic batch sizing does with known step times on a
//    machine of any load.
// Thread safety: a timer is used by the one thread that runs its strategy's
// steps. Errors: the constructors throw UsageError for a factor below 1 or a
// negative or non-finite time. Blocking: SlowdownTimer sleeps as described.
#pragma once

#include <cstdint>
#include <memory>

namespace dtrain::strategy {

class ComputeTimer {
 public:
  virtual ~ComputeTimer() = default;
  // The seconds to report for a call of `rows` rows measured at `measured_s`.
  virtual double account(double measured_s, int64_t rows) = 0;
};

class MeasuredTimer final : public ComputeTimer {
 public:
  double account(double measured_s, int64_t /*rows*/) override { return measured_s; }
};

class SlowdownTimer final : public ComputeTimer {
 public:
  explicit SlowdownTimer(double factor);
  double factor() const { return factor_; }
  double account(double measured_s, int64_t rows) override;

 private:
  double factor_;
};

class ModelledTimer final : public ComputeTimer {
 public:
  ModelledTimer(double fixed_s, double per_row_s);
  double account(double measured_s, int64_t rows) override;

 private:
  double fixed_s_;
  double per_row_s_;
};

}  // namespace dtrain::strategy
