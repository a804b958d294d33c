#include "core/error.h"

namespace dtrain {

namespace {
std::string peer_name(int peer) {
  return peer < 0 ? std::string("unknown peer") : fmt::format("rank {}", peer);
}
}  // namespace

ConfigError::ConfigError(std::string file, std::string key, int64_t line,
                         const std::string& problem)
    : Error(line > 0 ? fmt::format("{}:{}: '{}': {}", file, line, key, problem)
                     : fmt::format("{}: '{}': {}", file, key, problem)),
      file_(std::move(file)),
      key_(std::move(key)),
      line_(line) {}

CommError::CommError(int peer, std::string operation, const std::string& problem)
    : Error(fmt::format("{} with {}: {}", operation, peer_name(peer), problem)),
      peer_(peer),
      operation_(std::move(operation)) {}

TimeoutError::TimeoutError(int peer, std::string operation, std::chrono::milliseconds waited,
                           const std::string& awaited)
    : CommError(peer, std::move(operation),
                fmt::format("timed out after {} ms waiting for {}", waited.count(), awaited)),
      waited_(waited) {}

CheckpointError::CheckpointError(std::string path, int64_t step, const std::string& problem)
    : Error(step >= 0 ? fmt::format("checkpoint {} (step {}): {}", path, step, problem)
                      : fmt::format("checkpoint {}: {}", path, problem)),
      path_(std::move(path)),
      step_(step) {}

namespace detail {
void throw_check_failure(const char* file, int line, const char* condition,
                         const std::string& message) {
  throw InternalError(fmt::format("{}:{}: check failed: {}: {}", file, line, condition, message));
}
}  // namespace detail

}  // namespace dtrain
