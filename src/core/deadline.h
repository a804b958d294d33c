// Deadline: a point in time after which a blocking call gives up.
//
// Every blocking operation in dtrain takes a Deadline (or a timeout from which
// one is made) and throws TimeoutError when it passes. A default-constructed
// Deadline never expires; use it only where an outer layer bounds the wait.
// Thread safety: a value type.
#pragma once

#include <chrono>

namespace dtrain {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  Deadline() : at_(Clock::time_point::max()) {}
  explicit Deadline(Clock::time_point at) : at_(at) {}
  static Deadline after(std::chrono::milliseconds timeout) {
    return Deadline(Clock::now() + timeout);
  }
  static Deadline never() { return Deadline(); }

  bool expired() const { return Clock::now() >= at_; }
  bool is_never() const { return at_ == Clock::time_point::max(); }
  Clock::time_point at() const { return at_; }
  // Time left, clamped at zero; a very large value for never().
  std::chrono::milliseconds remaining() const {
    if (is_never()) return std::chrono::milliseconds(std::chrono::hours(24 * 365));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at_ - Clock::now());
    return left.count() > 0 ? left : std::chrono::milliseconds(0);
  }

 private:
  Clock::time_point at_;
};

}  // namespace dtrain
