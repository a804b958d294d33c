#include "comm/wire/rate_limited_log.h"

namespace dtrain::comm::wire {

void RateLimitedLog::add(std::string_view detail) {
  const uint64_t n = ++count_;
  if (logged(n) && logger_.enabled(level_)) {
    logger_.log(level_, fmt::format("{} ({} so far): {}", event_, n, detail));
  }
}

}  // namespace dtrain::comm::wire
