// Connects one worker process of a launched decentralized job (by dtrain's
// launcher, mpirun or srun) to its peers with a ZmqPeerLink
// (comm/peer/zmq_peer_link.h), authenticated with the job secret
// (LaunchSettings::job_secret) when there is one.
//
// Where the peers are:
//  - with a run folder (LaunchSettings::run_dir, dtrain's launcher), every
//    rank's endpoint is fixed: ipc://<run_dir>/peer-<rank>. No coordinator is
//    involved, and a replacement process (restart_count > 0) binds its
//    predecessor's endpoint: the others' connections find it again and its
//    hello tells them it joined;
//  - otherwise (mpirun, srun) rank 0 hosts a rendezvous coordinator at
//    launch.coordinator (or one it publishes under mpirun:
//    comm/rendezvous/coordinator_discovery.h), every rank registers its tcp endpoint (bound on
//    listen_host, advertised as advertise_host) and gets the table; the
//    coordinator then stays alive with rank 0's link but is no longer in the
//    loop. A replacement cannot find its peers this way: restart_count > 0
//    without a run folder is a ConfigError saying so.
// Blocking: the rendezvous waits at most settings.timeout (TimeoutError
// naming the missing ranks); with a run folder it returns at once (peers not
// yet started are waited for by the link's join timeout, the same bound).
// Errors: ConfigError for a missing coordinator, a replacement without a run
// folder, or a socket path too long; CommError when binding fails.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "comm/peer/zmq_peer_link.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/transport/link_shaper.h"
#include "core/log.h"

namespace dtrain::comm {

struct PeerLinkSettings {
  // Bound on the rendezvous, and the join timeout: how long a peer may take
  // to start before it counts as lost.
  std::chrono::milliseconds timeout{60000};
  std::chrono::milliseconds heartbeat_interval{200};
  // A peer silent this long is lost (the others go on without it).
  std::chrono::milliseconds heartbeat_timeout{10000};
  uint64_t max_message_bytes = uint64_t{1} << 30;
  // Emulated slow link for this worker's data frames (benchmarks).
  std::optional<LinkShaperOptions> link;
};

// The fixed endpoint of `rank` in a run folder.
std::string run_dir_peer_endpoint(const std::string& run_dir, int rank);

std::unique_ptr<ZmqPeerLink> connect_peer_link(const std::string& job_name,
                                               const LaunchInfo& launch,
                                               const PeerLinkSettings& settings, Logger& logger);

}  // namespace dtrain::comm
