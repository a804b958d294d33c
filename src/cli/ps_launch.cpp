#include "cli/ps_launch.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "cli/ps_job.h"
#include "core/error.h"

namespace dtrain::cli {

namespace {

// Longest socket path an ipc endpoint may have (sockaddr_un::sun_path less
// its terminating NUL).
constexpr size_t kMaxSocketPath = 107;

// A private folder (mkdtemp, mode 0700) under `tmpdir` (or /tmp), removed
// with what it holds when the object goes.
class PrivateDir {
 public:
  explicit PrivateDir(const std::string& tmpdir) {
    std::string base = tmpdir.empty() ? "/tmp" : tmpdir;
    // The sockets' paths must fit sockaddr_un: fall back to /tmp when TMPDIR is deep.
    if (base.size() + 40 > kMaxSocketPath) base = "/tmp";
    std::string pattern = base + "/dtrain-ps-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(),
                              fmt::format("mkdtemp {} (the ps servers' socket folder)", pattern));
    }
    path_ = std::move(pattern);
  }
  ~PrivateDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

LaunchResult run_ps_job(LaunchOptions options, int servers, int min_workers, int max_restarts,
                        std::ostream& out, std::ostream& err, Logger& logger, Deadline deadline) {
  const int workers = options.workers - servers;
  if (servers < 1 || workers < 1 || min_workers < 1 || min_workers > workers ||
      max_restarts < 0) {
    throw UsageError(fmt::format(
        "ps job: {} server(s) and {} worker(s) (each at least 1), min_workers {} must be in "
        "1..{} and max_restarts {} must not be negative",
        servers, workers, min_workers, workers, max_restarts));
  }
  const auto tmpdir = options.environment.find("TMPDIR");
  const PrivateDir sockets(tmpdir == options.environment.end() ? "" : tmpdir->second);
  std::string endpoints;
  for (int s = 0; s < servers; ++s) {
    endpoints += fmt::format("{}ipc://{}/server-{}", s == 0 ? "" : ",", sockets.path(), s);
  }
  options.environment[kPsEndpointsVariable] = endpoints;
  options.environment[kLaunchIdVariable] = random_job_secret().substr(0, 16);

  LaunchOptions::Elastic e;
  e.essential_slots = servers + 1;  // the servers and worker 0, the chief
  e.first_worker_slot = servers;
  e.min_workers = min_workers;
  e.max_restarts = max_restarts;
  e.slot_name = [servers](int slot) {
    return slot < servers ? fmt::format("ps server {}", slot)
                          : fmt::format("worker {}", slot - servers);
  };
  options.elastic = std::move(e);
  logger.info("ps job: {} server(s) at {}, {} worker(s), at least {} running, up to {} restart(s) "
              "of failed processes",
              servers, sockets.path(), workers, min_workers, max_restarts);
  return Launcher(std::move(options), out, err, logger).run(deadline);
}

}  // namespace dtrain::cli
