#include "cli/elastic_launch.h"

#include <fmt/format.h>

#include "comm/rendezvous/elastic_rendezvous.h"
#include "comm/rendezvous/job_secret.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"

namespace dtrain::cli {

LaunchResult run_elastic_job(LaunchOptions options, const std::string& job_name, int min_workers,
                             int max_restarts, std::ostream& out, std::ostream& err, Logger& logger,
                             Deadline deadline) {
  if (min_workers < 1 || min_workers > options.workers || max_restarts < 0) {
    throw UsageError(
        fmt::format("elastic job: min_workers {} must be in 1..{} (the workers) and "
                    "max_restarts {} must not be negative",
                    min_workers, options.workers, max_restarts));
  }
  provide_job_secret(options.environment);
  // The secret the workers will use: the key file's or the one just made.
  comm::LaunchSettings settings = comm::resolve_launch_settings(options.environment);
  comm::resolve_job_secret(settings, "", "");
  // security.encrypt reaches the launcher as the workers' DTRAIN_ENCRYPT.
  const auto encrypt_var = options.environment.find("DTRAIN_ENCRYPT");
  const bool encrypt = encrypt_var != options.environment.end() && encrypt_var->second == "1";
  comm::ElasticRendezvousOptions r;
  r.slots = options.workers;
  r.min_workers = min_workers;
  r.on_generation = options.on_generation;
  comm::ElasticRendezvousServer server(options.coordinator_host, 0, r,
                                       comm::JobAuth(job_name, settings.job_secret, encrypt),
                                       logger);
  options.environment["DTRAIN_ELASTIC_COORDINATOR"] = server.address();
  LaunchOptions::Elastic e;
  e.min_workers = min_workers;
  e.max_restarts = max_restarts;
  e.on_worker_starting = [&server](int slot) { server.set_alive(slot, true); };
  e.on_worker_ended = [&server](const WorkerExit& exit, int) {
    // Only a member's exit finishes the job: a worker the group dropped
    // (silent past the heartbeat timeout) that woke up and exited 0 does not.
    if (exit.ok()) server.finish(exit.rank);
    server.set_alive(exit.rank, false);
  };
  e.job_finished = [&server] { return server.members_done(); };
  e.on_stopping = [&server](const std::string& reason) { server.stop(reason); };
  options.elastic = std::move(e);
  logger.info(
      "elastic job: {} worker slot(s), at least {} worker(s), up to {} replacement(s); "
      "elastic coordinator {}",
      options.workers, min_workers, max_restarts, server.address());
  return Launcher(std::move(options), out, err, logger).run(deadline);
}

}  // namespace dtrain::cli
