#include "comm/transport/link_shaper.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>

#include "core/error.h"

namespace dtrain::comm {

namespace {

std::chrono::nanoseconds nanoseconds_of(double value) {
  return std::chrono::nanoseconds(std::llround(value));
}

}  // namespace

LinkShaper::LinkShaper(LinkShaperOptions options, Now now, SleepUntil sleep_until)
    : options_(options), now_(std::move(now)), sleep_until_(std::move(sleep_until)) {
  if (!(options_.mbps > 0) || !std::isfinite(options_.mbps)) {
    throw UsageError(
        fmt::format("link shaper: mbps must be a positive number, got {}", options_.mbps));
  }
  if (!(options_.latency_ms >= 0) || !std::isfinite(options_.latency_ms)) {
    throw UsageError(
        fmt::format("link shaper: latency_ms must be >= 0, got {}", options_.latency_ms));
  }
  if (!now_) now_ = [] { return Clock::now(); };
  if (!sleep_until_) sleep_until_ = [](Clock::time_point t) { std::this_thread::sleep_until(t); };
  latency_ = std::chrono::duration_cast<Clock::duration>(nanoseconds_of(options_.latency_ms * 1e6));
}

LinkShaper::~LinkShaper() {
  drain();
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

LinkShaper::Clock::time_point LinkShaper::book(Clock::time_point now, size_t bytes) {
  const auto transmit = std::chrono::duration_cast<Clock::duration>(
      nanoseconds_of(static_cast<double>(bytes) * 8000.0 / options_.mbps));
  link_free_ = std::max(now, link_free_) + transmit;
  return link_free_ + latency_;
}

LinkShaper::Clock::time_point LinkShaper::reserve(size_t bytes) {
  const Clock::time_point now = now_();
  std::lock_guard lock(mutex_);
  return book(now, bytes);
}

void LinkShaper::post(size_t bytes, std::function<void()> deliver) {
  {
    // Booking and queueing under one lock keeps the queue in release order.
    const Clock::time_point now = now_();
    std::lock_guard lock(mutex_);
    queue_.push_back(Delivery{book(now, bytes), std::move(deliver)});
    if (!thread_.joinable()) {
      thread_ = std::jthread([this](std::stop_token stop) { run(std::move(stop)); });
    }
  }
  changed_.notify_all();
}

void LinkShaper::wait_for_release(size_t bytes) { sleep_until_(reserve(bytes)); }

void LinkShaper::drain() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty() && !delivering_; });
}

void LinkShaper::cancel() {
  {
    std::lock_guard lock(mutex_);
    queue_.clear();
  }
  changed_.notify_all();
}

void LinkShaper::run(std::stop_token stop) {
  for (;;) {
    Delivery next;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, stop, [&] { return !queue_.empty(); });
      if (queue_.empty()) return;  // stop requested (the destructor drained first)
      next = std::move(queue_.front());
      queue_.pop_front();
      delivering_ = true;
    }
    sleep_until_(next.release_at);
    try {
      next.deliver();
    } catch (...) {  // NOLINT(bugprone-empty-catch): the deliverer reports its own failures
    }
    {
      std::lock_guard lock(mutex_);
      delivering_ = false;
    }
    changed_.notify_all();
  }
}

}  // namespace dtrain::comm
