#include "comm/rendezvous/coordinator_socket.h"

#include <fmt/format.h>

#include <chrono>
#include <utility>

#include "comm/rendezvous/launch_env.h"
#include "comm/wire/wire.h"

namespace dtrain::comm {

CoordinatorSocket bind_coordinator_socket(zmq::context_t& context, const std::string& name,
                                          const std::string& bind_host, int port, uint32_t ranks,
                                          uint64_t max_payload,
                                          std::function<void(const wire::RejectedFrame&)> on_reject,
                                          const JobAuth& auth, Logger& logger) {
  wire::FramedSocketOptions o;
  o.name = name;
  o.rank = wire::kCoordinator;
  o.limits = wire::FrameLimits{auth.job_id(), ranks, wire::kCoordinator, max_payload};
  o.accepted = {wire::MessageType::kRegister};
  o.linger = std::chrono::milliseconds(1000);
  o.on_reject = std::move(on_reject);
  CoordinatorSocket c;
  c.socket = std::make_unique<wire::FramedSocket>(
      context, wire::FramedSocket::Role::kRouter,
      fmt::format("tcp://{}:{}", bind_host, port == 0 ? "*" : std::to_string(port)), std::move(o),
      auth, logger);
  const std::string& bound = c.socket->endpoint();
  c.port = parse_host_port(bound.substr(bound.find("://") + 3), "coordinator endpoint").port;
  return c;
}

std::string coordinator_address(const std::string& bind_host, int port) {
  const bool wildcard = bind_host == "*" || bind_host == "0.0.0.0";
  return fmt::format("{}:{}", wildcard ? std::string("127.0.0.1") : bind_host, port);
}

}  // namespace dtrain::comm
