// Connects one worker process of a launched job (by dtrain's launcher,
// mpirun or srun) to its peers: the ZeroMQ transport through the
// coordinator's rendezvous (rank 0 hosts it), authenticated with the job
// secret DTRAIN_JOB_SECRET when set, and a Communicator over it (with the
// shared-memory allreduce when every rank is on this host).
// Optional environment: DTRAIN_LISTEN_HOST (the address to bind, default
// 127.0.0.1; 0.0.0.0 across hosts) and DTRAIN_ADVERTISE_HOST (the address
// peers use to reach this process).
// Blocking: until every rank has joined, at most `timeout`; throws
// ConfigError without a coordinator, TimeoutError naming the missing ranks.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "comm/collectives/communicator.h"
#include "comm/rendezvous/launch_env.h"
#include "core/log.h"

namespace dtrain::cli {

std::unique_ptr<comm::Communicator> connect_worker(const std::string& job_name,
                                                   const comm::LaunchInfo& launch,
                                                   const std::map<std::string, std::string>& env,
                                                   std::chrono::milliseconds timeout, Logger& logger);

}  // namespace dtrain::cli
