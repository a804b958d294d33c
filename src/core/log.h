// Logger: where library code reports what happened.
//
// Library code never prints. A component that has something to say takes a
// Logger (by reference, owned by whoever assembled the job, alive for the
// component's lifetime) and calls it; the command line decides where lines go.
// A default Logger drops everything below `min_level` and writes the rest to
// a sink function; Logger::null() drops everything.
// Thread safety: log() may be called from any thread; the sink is called under
// a mutex.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace dtrain {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

std::string_view to_string(LogLevel level);

class Logger {
 public:
  using Sink = std::function<void(LogLevel, std::string_view)>;

  Logger() = default;
  Logger(LogLevel min_level, Sink sink) : min_level_(min_level), sink_(std::move(sink)) {}
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  // A logger that writes "[level] message" lines to stderr.
  static Logger& stderr_logger();
  static Logger& null();

  bool enabled(LogLevel level) const { return sink_ && level >= min_level_; }
  void set_level(LogLevel level) { min_level_ = level; }

  void log(LogLevel level, std::string_view message);
  template <typename... Args>
  void info(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(LogLevel::kInfo)) log(LogLevel::kInfo, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(LogLevel::kWarn)) log(LogLevel::kWarn, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(LogLevel::kError))
      log(LogLevel::kError, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void debug(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(LogLevel::kDebug))
      log(LogLevel::kDebug, fmt::format(f, std::forward<Args>(args)...));
  }

 private:
  LogLevel min_level_ = LogLevel::kInfo;
  Sink sink_;
  std::mutex mutex_;
};

}  // namespace dtrain
