// Internal to comm/transport/zmq_transport*.cpp: the per-peer state of a
// ZmqTransport, shared by its call path (zmq_transport.cpp) and its I/O
// thread (zmq_transport_io.cpp). Locking as the comments on each member say.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <zmq.hpp>

#include "comm/transport/zmq_transport.h"

namespace dtrain::comm {

struct ZmqTransport::Peer {
  std::mutex send_mutex;
  zmq::socket_t push;           // guarded by send_mutex
  bool push_closed = false;     // guarded by send_mutex
  uint64_t next_sequence = 0;   // guarded by send_mutex
  zmq::socket_t monitor;        // I/O thread only (and the destructor after it)
  bool ever_connected = false;  // I/O thread only
  std::string endpoint;
  // Tcp lanes: data goes through the lane once lane_sending is set. A
  // sender that finds it unset holds lane_gate while it queues on ZeroMQ,
  // and switch_to_lane() holds it while it sends the marker and sets the
  // flag, so that no ZeroMQ data frame follows the marker.
  std::mutex lane_gate;
  std::atomic<bool> lane_sending{false};
};

inline std::span<const std::byte> bytes_of(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

}  // namespace dtrain::comm
