#include "core/log.h"

#include <cstdio>

namespace dtrain {

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "?";
}

void Logger::log(LogLevel level, std::string_view message) {
  if (!enabled(level)) return;
  std::lock_guard lock(mutex_);
  sink_(level, message);
}

// These two are immutable after construction apart from set_level, which only
// the command line calls at start-up; they are the process's default sinks.
Logger& Logger::stderr_logger() {
  static Logger logger(LogLevel::kInfo, [](LogLevel level, std::string_view message) {
    std::fprintf(stderr, "[%.*s] %.*s\n", static_cast<int>(to_string(level).size()),
                 to_string(level).data(), static_cast<int>(message.size()), message.data());
  });
  return logger;
}

Logger& Logger::null() {
  static Logger logger;
  return logger;
}

}  // namespace dtrain
