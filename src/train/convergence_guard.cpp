#include "train/convergence_guard.h"

#include <fmt/format.h>

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
  level_ = std::min(level_ + 1, strategy::CompressionSettings::kDenseLevel);
  hold_until_ = step + config_.hold_steps;
  window_.clear();
  window_sum_ = 0.0;
}

bool ConvergenceGuard::relax(int64_t step) {
  if (level_ == 0 || step < hold_until_) return false;
  --level_;
  hold_until_ = step + config_.hold_steps;
  return true;
}

std::string ConvergenceGuard::encode() const {
  return fmt::format("level={} hold_until={} best={:a} first={:a} rescues={}", level_, hold_until_,
                     best_, first_, rescues_);
}

void ConvergenceGuard::decode(const std::string& text) {
  int level = 0;
  long long hold_until = 0;
  long long rescues = 0;
  char best_text[64] = {};
  char first_text[64] = {};
  if (std::sscanf(text.c_str(), "level=%d hold_until=%lld best=%63s first=%63s rescues=%lld",
                  &level, &hold_until, best_text, first_text, &rescues) != 5 ||
      level < 0 || level > strategy::CompressionSettings::kDenseLevel) {
    throw DataError(fmt::format("convergence guard state '{}' is malformed", text));
  }
  level_ = level;
  hold_until_ = hold_until;
  rescues_ = rescues;
  best_ = std::strtod(best_text, nullptr);
  first_ = std::strtod(first_text, nullptr);
  window_.clear();
  window_sum_ = 0.0;
}

}  // namespace dtrain::train
