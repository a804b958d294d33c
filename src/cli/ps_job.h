// The processes of a parameter-server job (`--strategy ps`): S servers and N
// workers, started together by dtrain's launcher (S + N processes running the
// same command line), mpirun (-np S+N) or srun. Global rank g < S is server
// g; rank S + w is worker w.
//
// Endpoint discovery reuses the coordinator rendezvous (comm/rendezvous/rendezvous.h)
// with world S + N, exactly as the allreduce workers do: rank 0 (server 0)
// hosts it on the coordinator's port; each server registers the endpoint its
// ps::Server bound; workers register with no endpoint and read the servers'
// from the table. The job secret (DTRAIN_JOB_SECRET) authenticates the
// rendezvous and every ps frame. Optional environment, as for allreduce:
// DTRAIN_LISTEN_HOST (address the server binds, default 127.0.0.1; 0.0.0.0
// across hosts) and DTRAIN_ADVERTISE_HOST (address workers use to reach it).
//
// Fixed endpoints (what dtrain's own launcher does, cli/ps_launch.h; possible
// under any launcher): DTRAIN_PS_ENDPOINTS="EP0,EP1,..." names server s's
// endpoint ("ipc:///path" or "tcp://host:port"). Server s binds EP s, the
// workers connect to them, and no rendezvous takes place. Only then can a
// server be replaced: a process started for server s with
// DTRAIN_RESTART_COUNT > 0 binds the same endpoint as a replacement
// (ps::ServerOptions::replacement) and restores its shard from the newest
// intact checkpoint of the job's output folder that belongs to this run (one
// whose DTRAIN_LAUNCH_ID matches, or any when the job resumes from its
// checkpoints); the workers re-join it by themselves.
// Test hook: DTRAIN_TEST_KILL_AT_STEP=s:V makes the first process of server s
// SIGKILL itself once its version reaches V (cli/test_hooks.h).
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

#include "comm/rendezvous/launch_env.h"
#include "core/log.h"
#include "train/job_config.h"

namespace dtrain::cli {

// The environment variable with the servers' fixed endpoints, comma-separated.
inline constexpr const char* kPsEndpointsVariable = "DTRAIN_PS_ENDPOINTS";
// The environment variable naming one launch of a job (random hex): its
// checkpoints carry it (ps::kCheckpointLaunchKey).
inline constexpr const char* kLaunchIdVariable = "DTRAIN_LAUNCH_ID";

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
