#include "train/convergence_guard.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "strategy/compression.h"

namespace dtrain::train {

bool ConvergenceGuard::diverged(double loss) {
  if (!std::isfinite(loss)) return true;
  window_.push_back(loss);
  window_sum_ += loss;
  if (static_cast<int64_t>(window_.size()) > config_.window) {
    window_sum_ -= window_.front();
    window_.pop_front();
  }
  if (static_cast<int64_t>(window_.size()) < config_.window) return false;
  const double mean = window_sum_ / static_cast<double>(window_.size());
  if (first_ < 0.0) first_ = mean;
  if (best_ >= 0.0 && mean > best_ + config_.margin * std::max(best_, first_)) return true;
  if (best_ < 0.0 || mean < best_) best_ = mean;
  return false;
}

void ConvergenceGuard::rescued(int64_t step) {
  ++rescues_;
  if (++failures_[static_cast<size_t>(level_)] >= 2) floor_ = std::max(floor_, level_ + 1);
  level_ = std::min(level_ + 1, strategy::CompressionSettings::kDenseLevel);
  floor_ = std::min(floor_, strategy::CompressionSettings::kDenseLevel);
  hold_until_ = step + config_.hold_steps;
  window_.clear();
  window_sum_ = 0.0;
}

bool ConvergenceGuard::relax(int64_t step) {
  if (level_ <= floor_ || step < hold_until_) return false;
  --level_;
  hold_until_ = step + config_.hold_steps;
  return true;
}

std::string ConvergenceGuard::encode() const {
  return fmt::format("level={} hold_until={} best={:a} first={:a} rescues={} floor={} failures={}",
                     level_, hold_until_, best_, first_, rescues_, floor_,
                     fmt::join(failures_, ","));
}

void ConvergenceGuard::decode(const std::string& text) {
  int level = 0;
  long long hold_until = 0;
  long long rescues = 0;
  char best_text[64] = {};
  char first_text[64] = {};
  int floor = 0;
  int f[4] = {};
  static_assert(strategy::CompressionSettings::kDenseLevel == 3, "failures_ has 4 counts");
  if (std::sscanf(text.c_str(),
                  "level=%d hold_until=%lld best=%63s first=%63s rescues=%lld floor=%d "
                  "failures=%d,%d,%d,%d",
                  &level, &hold_until, best_text, first_text, &rescues, &floor, &f[0], &f[1], &f[2],
                  &f[3]) != 10 ||
      level < 0 || level > strategy::CompressionSettings::kDenseLevel || floor < 0 ||
      floor > level) {
    throw DataError(fmt::format("convergence guard state '{}' is malformed", text));
  }
  level_ = level;
  floor_ = floor;
  for (size_t i = 0; i < failures_.size(); ++i) failures_[i] = f[i];
  hold_until_ = hold_until;
  rescues_ = rescues;
  best_ = std::strtod(best_text, nullptr);
  first_ = std::strtod(first_text, nullptr);
  window_.clear();
  window_sum_ = 0.0;
}

}  // namespace dtrain::train
