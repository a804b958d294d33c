// The processes of a parameter-server job (`--strategy ps`): S servers and N
// workers, started together by dtrain's launcher (S + N processes running the
// same command line), mpirun (-np S+N) or srun. Global rank g < S is server
// g; rank S + w is worker w.
//
// Endpoint discovery reuses the coordinator rendezvous (comm/rendezvous.h)
// with world S + N, exactly as the allreduce workers do: rank 0 (server 0)
// hosts it on the coordinator's port; each server registers the endpoint its
// ps::Server bound; workers register with no endpoint and read the servers'
// from the table. The job secret (DTRAIN_JOB_SECRET) authenticates the
// rendezvous and every ps frame. Optional environment, as for allreduce:
// DTRAIN_LISTEN_HOST (address the server binds, default 127.0.0.1; 0.0.0.0
// across hosts) and DTRAIN_ADVERTISE_HOST (address workers use to reach it).
//
// Errors: ConfigError without a coordinator or when the world has no room
// for a worker (S + N <= S); TimeoutError naming the missing ranks when the
// rendezvous does not complete within the job's timeout; CommError when a
// server cannot bind. Blocking: the rendezvous, bounded by that timeout;
// run_ps_server() serves until every worker is done.
// Thread safety: free functions of one thread.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/launch_env.h"
#include "core/log.h"
#include "train/job_config.h"

namespace dtrain::cli {

// A process's role in a ps job of `servers` servers.
struct PsRole {
  bool server = false;
  int index = 0;  // server s or worker w
};
PsRole ps_role(int global_rank, int servers);

// A Logger writing "[level] <prefix>: message" to stderr ("worker 0"), so
// that each line says which role wrote it (the launcher's "[rank g]" prefix
// is the global rank, S + w for worker w).
std::unique_ptr<Logger> role_logger(const std::string& prefix, LogLevel level);

// Runs server `role.index`: binds a ps::Server with the job's consistency,
// optimizer and seed, publishes its endpoint at the rendezvous (hosting it on
// rank 0) and serves until every worker finished or died with at least one
// finished; then returns 0. Server 0 keeps the rendezvous up until then, so
// no rank misses the table.
int run_ps_server(const train::JobConfig& job, const comm::LaunchInfo& launch,
                  const std::map<std::string, std::string>& env, Logger& logger);

// A worker's side of the rendezvous: the servers' endpoints, by server index.
std::vector<std::string> discover_ps_servers(const train::JobConfig& job,
                                             const comm::LaunchInfo& launch,
                                             const std::map<std::string, std::string>& env,
                                             Logger& logger);

}  // namespace dtrain::cli
