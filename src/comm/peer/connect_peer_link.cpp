#include "comm/peer/connect_peer_link.h"

#include <unistd.h>

#include <vector>

#include "comm/rendezvous/coordinator_discovery.h"
#include "comm/rendezvous/host_address.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

// sockaddr_un's path holds 108 bytes with its terminator.
constexpr size_t kMaxIpcPath = 107;

ZmqPeerLinkOptions link_options(const LaunchInfo& launch, const PeerLinkSettings& settings) {
  ZmqPeerLinkOptions o;
  o.rank = launch.rank;
  o.world_size = launch.world_size;
  o.heartbeat_interval = settings.heartbeat_interval;
  o.heartbeat_timeout = settings.heartbeat_timeout;
  o.join_timeout = settings.timeout;
  o.max_message_bytes = settings.max_message_bytes;
  o.link = settings.link;
  return o;
}

std::unique_ptr<ZmqPeerLink> connect_fixed(const LaunchInfo& launch, ZmqPeerLinkOptions o,
                                           const JobAuth& auth, Logger& logger) {
  std::vector<std::string> endpoints;
  for (int r = 0; r < launch.world_size; ++r) {
    endpoints.push_back(run_dir_peer_endpoint(launch.settings.run_dir, r));
    if (endpoints.back().size() - 6 > kMaxIpcPath) {
      throw ConfigError(fmt::format(
          "peer link socket path {} is longer than {} bytes: use a shorter DTRAIN_RUN_DIR",
          endpoints.back().substr(6), kMaxIpcPath));
    }
  }
  o.bind_endpoint = endpoints[static_cast<size_t>(launch.rank)];
  o.peer_endpoints = std::move(endpoints);
  if (launch.settings.restart_count > 0) {
    logger.info("peer link of rank {}: replacement #{} binds {}", launch.rank,
                launch.settings.restart_count, o.bind_endpoint);
  }
  return std::make_unique<ZmqPeerLink>(std::move(o), auth, logger);
}

std::unique_ptr<ZmqPeerLink> connect_by_rendezvous(const LaunchInfo& launch,
                                                   const PeerLinkSettings& settings,
                                                   ZmqPeerLinkOptions o, const JobAuth& auth,
                                                   Logger& logger) {
  if (launch.settings.restart_count > 0) {
    throw ConfigError(fmt::format(
        "worker {} was restarted (DTRAIN_RESTART_COUNT={}) without a run folder "
        "(DTRAIN_RUN_DIR): its peers found their neighbours through a rendezvous that is "
        "over and could not find it; launch with dtrain's launcher for replacements",
        launch.rank, launch.settings.restart_count));
  }
  const Deadline deadline = Deadline::after(settings.timeout);
  CoordinatorMeeting meeting(launch, auth, deadline, logger);
  const std::string& listen = launch.settings.listen_host;
  o.bind_endpoint = fmt::format(
      "tcp://{}:0", listen.find(':') != std::string::npos ? "[" + listen + "]" : listen);
  auto link = std::make_unique<ZmqPeerLink>(std::move(o), auth, logger);
  const std::string& bound = link->endpoint();
  const int port = parse_host_port(bound.substr(bound.find("://") + 3), "bound endpoint").port;
  std::string advertise = launch.settings.advertise_host;
  if (advertise.empty()) advertise = is_wildcard_host(listen) ? this_host_name() : listen;
  if (advertise.find(':') != std::string::npos) advertise = "[" + advertise + "]";
  PeerEndpoint self;
  self.rank = launch.rank;
  self.host = this_host_name();
  self.tcp_endpoint = fmt::format("tcp://{}:{}", advertise, port);
  const std::vector<PeerEndpoint> table =
      rendezvous(meeting.address(), self, launch.world_size, auth, deadline, logger);
  std::vector<std::string> endpoints;
  for (const PeerEndpoint& peer : table) endpoints.push_back(peer.tcp_endpoint);
  link->connect(endpoints);
  if (auto server = meeting.take_server()) link->adopt_coordinator(std::move(server));
  return link;
}

}  // namespace

std::string run_dir_peer_endpoint(const std::string& run_dir, int rank) {
  return fmt::format("ipc://{}/peer-{}", run_dir, rank);
}

std::unique_ptr<ZmqPeerLink> connect_peer_link(const std::string& job_name,
                                               const LaunchInfo& launch,
                                               const PeerLinkSettings& settings, Logger& logger) {
  const JobAuth auth(job_name, launch.settings.job_secret, launch.settings.encrypt);
  ZmqPeerLinkOptions o = link_options(launch, settings);
  if (!launch.settings.run_dir.empty()) return connect_fixed(launch, std::move(o), auth, logger);
  return connect_by_rendezvous(launch, settings, std::move(o), auth, logger);
}

}  // namespace dtrain::comm
