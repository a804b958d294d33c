#include "cli/worker_comm.h"

#include <fmt/format.h>

#include "comm/wire/auth.h"
#include "comm/transport/zmq_transport.h"
#include "core/error.h"

namespace dtrain::cli {

std::unique_ptr<comm::Communicator> connect_worker(const std::string& job_name,
                                                   const comm::LaunchInfo& launch,
                                                   const std::map<std::string, std::string>& env,
                                                   std::chrono::milliseconds timeout, Logger& logger) {
  if (launch.coordinator.empty()) {
    throw ConfigError(fmt::format(
        "worker {} of {} ({}) has no coordinator address: set DTRAIN_COORDINATOR=host:port",
        launch.rank, launch.world_size, launch.source));
  }
  auto secret = env.find("DTRAIN_JOB_SECRET");
  const comm::JobAuth auth(job_name, secret == env.end() ? "" : secret->second);
  comm::ZmqTransportOptions t;
  t.rank = launch.rank;
  t.world_size = launch.world_size;
  if (auto host = env.find("DTRAIN_LISTEN_HOST"); host != env.end()) t.listen_host = host->second;
  if (auto host = env.find("DTRAIN_ADVERTISE_HOST"); host != env.end()) t.advertise_host = host->second;
  auto transport = comm::connect_zmq_transport(t, auth, launch.coordinator, launch.rank == 0,
                                               Deadline::after(timeout), logger);
  comm::CommunicatorOptions c;
  c.timeout = timeout;
  // Names this job's shared-memory segments: unique per job and coordinator.
  c.job_id = fmt::format("{:016x}-{:x}", auth.job_id(), std::hash<std::string>{}(launch.coordinator));
  return std::make_unique<comm::Communicator>(std::move(transport), c);
}

}  // namespace dtrain::cli
