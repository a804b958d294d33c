// RateLimitedLog: counts one kind of event (a dropped inbound frame, a
// refused registration) and logs it without letting a flood of junk flood
// the log: the first 16 events in full, then every 1024th, each line with
// the count so far:
//   "rank 0: dropped an inbound frame (2048 so far): wire frame rejected: ..."
// 100,000 junk frames give 16 + 97 lines. Every receiver of frames counts
// its drops with one (FramedSocket, ZmqTransport): the one place the limit
// is written.
//
// Ownership: the Logger must outlive it. Thread safety: add() and count()
// from any thread (an atomic counter; the Logger serialises its sink).
// Never blocks longer than the Logger's sink; never throws from add() unless
// the sink throws.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/log.h"

namespace dtrain::comm::wire {

class RateLimitedLog {
 public:
  static constexpr uint64_t kLoggedInFull = 16;
  static constexpr uint64_t kLogEvery = 1024;

  // `event` starts every line: "ps server 1: dropped an inbound frame".
  RateLimitedLog(Logger& logger, std::string event, LogLevel level = LogLevel::kWarn)
      : logger_(logger), event_(std::move(event)), level_(level) {}
  RateLimitedLog(const RateLimitedLog&) = delete;
  RateLimitedLog& operator=(const RateLimitedLog&) = delete;

  // Counts one event; logs "<event> (<n> so far): <detail>" when the n-th
  // event is one to log.
  void add(std::string_view detail);
  uint64_t count() const { return count_.load(); }
  // Whether the n-th event (from 1) is logged.
  static bool logged(uint64_t n) { return n <= kLoggedInFull || n % kLogEvery == 0; }

 private:
  Logger& logger_;
  std::string event_;
  LogLevel level_;
  std::atomic<uint64_t> count_{0};
};

}  // namespace dtrain::comm::wire
