#include "comm/rendezvous/job_secret.h"

#include <fmt/format.h>
#include <sodium.h>

#include <filesystem>

#include "comm/wire/key_file.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr const char* kEnvironment = "environment";

std::string absolute_path(const std::string& path) {
  return std::filesystem::absolute(path).lexically_normal().string();
}

// Whether two paths name one file (the same inode; by name when either is missing).
bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  const bool equivalent = std::filesystem::equivalent(a, b, ec);
  return ec ? a == b : equivalent;
}

}  // namespace

void resolve_job_secret(LaunchSettings& settings, const std::string& job_key_file,
                        const std::string& job_file) {
  std::string path;
  std::string named_by;
  if (!job_key_file.empty()) {
    path = absolute_path(job_key_file);
    named_by = fmt::format("security.key_file in {}", job_file);
  }
  if (!settings.key_file.empty()) {
    const std::string from_env = absolute_path(settings.key_file);
    if (!path.empty() && !same_file(path, from_env)) {
      throw ConfigError(kEnvironment, "DTRAIN_KEY_FILE", 0,
                        fmt::format("names '{}', but {} names '{}': unset DTRAIN_KEY_FILE or "
                                    "make both name the same key file",
                                    from_env, named_by, path));
    }
    if (path.empty()) {
      path = from_env;
      named_by = "DTRAIN_KEY_FILE";
    }
  }
  settings.key_file = path;
  if (path.empty()) return;
  std::string secret = wire::read_key_file(path, named_by);
  if (!settings.job_secret.empty() &&
      (settings.job_secret.size() != secret.size() ||
       sodium_memcmp(settings.job_secret.data(), secret.data(), secret.size()) != 0)) {
    throw ConfigError(kEnvironment, "DTRAIN_JOB_SECRET", 0,
                      fmt::format("is set and differs from the secret in key file '{}' ({}): "
                                  "unset DTRAIN_JOB_SECRET (the key file replaces it)",
                                  path, named_by));
  }
  settings.job_secret = std::move(secret);
}

}  // namespace dtrain::comm
