// Error kinds of dtrain.
//
// Every recoverable failure throws a subclass of dtrain::Error. Each kind
// carries the facts a user needs to act on it (file and line for configs,
// peer rank and operation for communication, path and step for checkpoints),
// and its what() message already names them, so callers may just print it.
// Broken internal invariants throw InternalError through DTRAIN_CHECK (never
// abort), so tests can assert on them.
//
// Thread safety: the types are values; throwing is safe from any thread.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dtrain {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A job file or option is wrong. `line` is 0 when unknown.
class ConfigError : public Error {
 public:
  ConfigError(std::string file, std::string key, int64_t line, const std::string& problem);
  explicit ConfigError(const std::string& message) : Error(message) {}
  const std::string& file() const { return file_; }
  const std::string& key() const { return key_; }
  int64_t line() const { return line_; }

 private:
  std::string file_;
  std::string key_;
  int64_t line_ = 0;
};

// Input data (a file or bytes from a peer) is malformed.
class DataError : public Error {
 public:
  using Error::Error;
};

// A peer failed, disagreed or sent garbage. `peer` is -1 when not known.
class CommError : public Error {
 public:
  CommError(int peer, std::string operation, const std::string& problem);
  int peer() const { return peer_; }
  const std::string& operation() const { return operation_; }

 private:
  int peer_ = -1;
  std::string operation_;
};

// A deadline expired while waiting for `peer` during `operation`.
class TimeoutError : public CommError {
 public:
  TimeoutError(int peer, std::string operation, std::chrono::milliseconds waited,
               const std::string& awaited);
  std::chrono::milliseconds waited() const { return waited_; }

 private:
  std::chrono::milliseconds waited_{0};
};

// A checkpoint could not be written or read back intact.
class CheckpointError : public Error {
 public:
  CheckpointError(std::string path, int64_t step, const std::string& problem);
  const std::string& path() const { return path_; }
  int64_t step() const { return step_; }

 private:
  std::string path_;
  int64_t step_ = -1;
};

// Training produced a value that is not finite (a NaN or an infinity in the
// loss, a gradient or an update): continuing would only spread it.
class NumericError : public Error {
 public:
  using Error::Error;
};

// The API was misused (wrong shapes, wrong order of calls).
class UsageError : public Error {
 public:
  using Error::Error;
};

// An internal invariant does not hold: a bug in dtrain.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void throw_check_failure(const char* file, int line, const char* condition,
                                      const std::string& message);
}  // namespace detail

}  // namespace dtrain

// DTRAIN_CHECK(cond, "format {}", args...): throws InternalError naming
// file:line, the condition and the formatted values when cond is false.
#define DTRAIN_CHECK(cond, ...)                                          \
  do {                                                                   \
    if (!(cond)) [[unlikely]] {                                          \
      ::dtrain::detail::throw_check_failure(__FILE__, __LINE__, #cond,   \
                                            ::fmt::format(__VA_ARGS__)); \
    }                                                                    \
  } while (false)

// Same contract, compiled out in release builds (hot loops).
#ifdef NDEBUG
#define DTRAIN_DCHECK(cond, ...) \
  do {                           \
  } while (false)
#else
#define DTRAIN_DCHECK(cond, ...) DTRAIN_CHECK(cond, __VA_ARGS__)
#endif
