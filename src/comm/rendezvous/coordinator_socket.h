// What both coordinators (the rendezvous of rendezvous.h and the elastic one
// of elastic_rendezvous.h) listen with: a ROUTER FramedSocket on
// tcp://bind_host:port (0: a free port) that takes only kRegister frames of
// the job (`auth`) from senders 0..ranks-1 within `max_payload` bytes,
// lingers 1 s on close, and passes every dropped frame to `on_reject` (which
// answers it with kReject).
// Internal to comm/rendezvous. Errors: CommError when it cannot bind.
// Thread safety: the socket belongs to the coordinator's serving thread
// after construction.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/framed_socket.h"
#include "core/log.h"

namespace dtrain::comm {

struct CoordinatorSocket {
  std::unique_ptr<wire::FramedSocket> socket;
  int port = 0;  // the port it bound
};

CoordinatorSocket bind_coordinator_socket(zmq::context_t& context, const std::string& name,
                                          const std::string& bind_host, int port, uint32_t ranks,
                                          uint64_t max_payload,
                                          std::function<void(const wire::RejectedFrame&)> on_reject,
                                          const JobAuth& auth, Logger& logger);

// "host:port" for the clients of a coordinator bound on `bind_host`
// (127.0.0.1 for a wildcard).
std::string coordinator_address(const std::string& bind_host, int port);

}  // namespace dtrain::comm
