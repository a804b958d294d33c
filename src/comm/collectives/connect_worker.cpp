#include "comm/collectives/connect_worker.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "comm/rendezvous/coordinator_discovery.h"
#include "comm/transport/zmq_transport.h"
#include "comm/wire/auth.h"
#include "core/error.h"

namespace dtrain::comm {

std::unique_ptr<Communicator> connect_worker(const std::string& job_name, const LaunchInfo& launch,
                                             const WorkerLinkOptions& options, Logger& logger) {
  const JobAuth auth(job_name, launch.settings.job_secret, launch.settings.encrypt);
  const Deadline deadline = Deadline::after(options.timeout);
  CoordinatorMeeting meeting(launch, auth, deadline, logger);
  ZmqTransportOptions t;
  t.rank = launch.rank;
  t.world_size = launch.world_size;
  t.listen_host = launch.settings.listen_host;
  t.advertise_host = launch.settings.advertise_host;
  if (!launch.settings.socket_dir.empty()) t.ipc_dir = launch.settings.socket_dir;
  if (launch.settings.tcp_only) t.prefer_ipc = false;
  t.heartbeat_timeout = options.heartbeat_timeout;
  t.heartbeat_interval = std::min(std::chrono::milliseconds(200), options.heartbeat_timeout / 4);
  t.link = options.link;
  auto transport = connect_zmq_transport(t, auth, meeting.address(), false, deadline, logger);
  if (auto server = meeting.take_server()) transport->adopt_coordinator(std::move(server));
  CommunicatorOptions c;
  c.timeout = options.timeout;
  c.shm_allreduce = !launch.settings.tcp_only;
  // Names this job's shared-memory segments: unique per job and coordinator.
  c.job_id =
      fmt::format("{:016x}-{:x}", auth.job_id(), std::hash<std::string>{}(meeting.address()));
  return std::make_unique<Communicator>(std::move(transport), c);
}

}  // namespace dtrain::comm
