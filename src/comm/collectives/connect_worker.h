// Connects one worker process of a launched job (by dtrain's launcher,
// mpirun or srun) to its peers: the ZeroMQ transport through the
// coordinator's rendezvous (rank 0 hosts it; where it is, given or
// discovered: comm/rendezvous/coordinator_discovery.h), authenticated with the job
// secret (LaunchSettings::job_secret) when there is one, and a Communicator
// over it (with the shared-memory allreduce when every rank is on this
// host). LaunchSettings::listen_host is the address to bind (0.0.0.0 across
// hosts), advertise_host the one peers use; run_dir, when set, holds the
// ipc sockets (a private folder the launcher removes).
// Blocking: until every rank has joined, at most `timeout`; throws
// ConfigError without a coordinator, TimeoutError naming the missing ranks.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "comm/collectives/communicator.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/transport/link_shaper.h"
#include "core/log.h"

namespace dtrain::comm {

struct WorkerLinkOptions {
  // Bound on joining and on every collective.
  std::chrono::milliseconds timeout{60000};
  // A peer silent this long fails the group, naming it.
  std::chrono::milliseconds heartbeat_timeout{5000};
  // Emulated slow link (tests and benchmarks): every message this worker
  // sends is paced by it, and shared memory is not used.
  std::optional<LinkShaperOptions> link;
};

std::unique_ptr<Communicator> connect_worker(const std::string& job_name, const LaunchInfo& launch,
                                             const WorkerLinkOptions& options, Logger& logger);

}  // namespace dtrain::comm
