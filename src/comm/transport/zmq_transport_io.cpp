// ZmqTransport's I/O thread (zmq_transport.h): reads and validates inbound
// frames, sends heartbeats, watches every peer's liveness, and the failure
// bookkeeping it shares with the call path.
#include <algorithm>
#include <array>
#include <cerrno>

#include "comm/transport/zmq_transport.h"
#include "comm/transport/zmq_transport_peer.h"
#include "comm/wire/framed_socket.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = Deadline::Clock;
using std::chrono::milliseconds;

// Frames read per poll wake-up before the I/O thread looks at its timers.
constexpr int kMaxFramesPerWake = 1024;

}  // namespace

// ---------------------------------------------------------------- I/O thread

void ZmqTransport::run_io(std::stop_token stop) {
  auto next_heartbeat = Clock::now();
  std::vector<zmq::pollitem_t> items;
  std::vector<int> item_peer;  // rank of each monitor item
  while (!stop.stop_requested()) {
    items.assign(1, zmq::pollitem_t{inbound_.handle(), 0, ZMQ_POLLIN, 0});
    item_peer.assign(1, -1);
    items.push_back(zmq::pollitem_t{nullptr, wake_fd_, ZMQ_POLLIN, 0});  // the destructor's call
    item_peer.push_back(-1);
    for (size_t p = 0; p < peers_.size(); ++p) {
      if (!peers_[p]) continue;
      items.push_back(zmq::pollitem_t{peers_[p]->monitor.handle(), 0, ZMQ_POLLIN, 0});
      item_peer.push_back(static_cast<int>(p));
    }
    // Wake for the next heartbeat to send, or when a peer's silence reaches
    // the timeout: a stopped peer is failed on time, not up to an interval late.
    const auto wait =
        std::clamp(std::min(std::chrono::duration_cast<milliseconds>(next_heartbeat - Clock::now()),
                            until_silence_timeout()),
                   milliseconds(0), options_.heartbeat_interval);
    try {
      zmq::poll(items.data(), items.size(), wait);
      if (items[0].revents & ZMQ_POLLIN) read_inbound();
      if (items[1].revents & ZMQ_POLLIN) continue;  // stopping: the loop condition ends it
      for (size_t i = 2; i < items.size(); ++i) {
        if (items[i].revents & ZMQ_POLLIN) read_monitor(item_peer[i]);
      }
      if (Clock::now() >= next_heartbeat) {
        send_heartbeats();
        next_heartbeat = Clock::now() + options_.heartbeat_interval;
      }
      check_liveness();
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      if (e.num() != EINTR) logger_.error("rank {}: I/O thread: {}", options_.rank, e.what());
    }
  }
}

void ZmqTransport::read_inbound() {
  for (int i = 0; i < kMaxFramesPerWake; ++i) {
    std::array<zmq::message_t, 2> parts;  // header, payload
    const size_t count = wire::receive_parts(inbound_, parts);
    if (count == 0) return;
    if (count == 1) {
      drop(fmt::format("a one-part message of {} bytes (expected header and payload)",
                       parts[0].size()));
    } else if (count > 2) {
      drop(fmt::format("a message of {} parts (expected 2)", count));
    } else {
      handle_frame(parts[0], parts[1]);
    }
  }
}

void ZmqTransport::handle_frame(zmq::message_t& header_part, zmq::message_t& payload_part) {
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(options_.world_size),
                                 static_cast<uint32_t>(options_.rank), options_.max_message_bytes};
  const auto header_bytes = bytes_of(header_part);
  static const wire::MessageTypes kTransportTypes{
      wire::MessageType::kData, wire::MessageType::kHeartbeat, wire::MessageType::kGoodbye,
      wire::MessageType::kAbort};
  wire::FrameHeader h;
  try {
    h = wire::check_header(header_bytes, limits, auth_, kTransportTypes);
  } catch (const DataError& e) {
    drop(e.what());
    return;
  }
  const int sender = static_cast<int>(h.sender);
  if (sender == options_.rank) {
    drop("a frame claiming to come from this rank");
    return;
  }
  try {
    wire::check_payload(h, header_bytes.first<wire::kHeaderBytes>(), bytes_of(payload_part), auth_);
  } catch (const DataError& e) {
    // With a secret, a frame that fails verification may come from anyone;
    // without one, a frame naming a rank of this job is that rank's garbage.
    if (auth_.enabled()) {
      drop(fmt::format("claiming rank {}: {}", sender, e.what()));
    } else {
      fail_peer(sender, fmt::format("sent a corrupted frame: {}", e.what()));
    }
    return;
  }
  uint64_t& expected = next_inbound_sequence_[sender];
  if (h.sequence < expected) {
    drop(fmt::format("a replayed frame claiming rank {} (sequence {}, expected {})", sender,
                     h.sequence, expected));
    return;
  }
  if (h.sequence > expected) {
    fail_peer(sender,
              fmt::format("frames were lost: got sequence {}, expected {}", h.sequence, expected));
    return;
  }
  ++expected;
  {
    std::lock_guard lock(mutex_);
    if (peer_failure_[sender]) return;
    last_heard_[sender] = Clock::now();
    if (h.type == wire::MessageType::kData && h.tag == kLaneOfferTag) {
      note_lane_frame(sender, payload_part);
    } else if (h.type == wire::MessageType::kData) {
      queues_[{sender, h.tag}].push_back(std::move(payload_part));
    } else if (h.type == wire::MessageType::kGoodbye) {
      said_goodbye_[sender] = true;
    } else if (h.type == wire::MessageType::kAbort) {
      // i32 culprit, then the reason; a culprit missing or outside
      // [-1, world size) is read as -1 (docs/wire-format.md).
      ByteReader r(bytes_of(payload_part), fmt::format("abort frame from rank {}", sender));
      int32_t culprit = r.remaining() >= sizeof(int32_t) ? r.read_i32("culprit") : -1;
      if (culprit < -1 || culprit >= options_.world_size) culprit = -1;
      const auto rest = r.rest();
      const std::string reason(reinterpret_cast<const char*>(rest.data()), rest.size());
      aborted_ = true;
      if (!failure_) {
        failure_ =
            Failure{culprit, fmt::format("rank {} gave up on the group: {}", sender, reason)};
        logger_.warn("rank {}: {}", options_.rank, failure_->problem);
      }
    } else {
      return;  // heartbeat: last_heard_ was all it carried
    }
  }
  notify_listener();
  cv_.notify_all();
}

void ZmqTransport::read_monitor(int peer_rank) {
  Peer& peer = *peers_[peer_rank];
  zmq::message_t event;
  zmq::message_t address;
  if (!peer.monitor.recv(event, zmq::recv_flags::dontwait)) return;
  if (event.more()) (void)peer.monitor.recv(address, zmq::recv_flags::dontwait);
  const std::optional<uint16_t> id = wire::monitor_event(event);
  if (!id) return;
  if (*id == ZMQ_EVENT_CONNECTED) {
    peer.ever_connected = true;
    std::lock_guard lock(mutex_);
    disconnected_since_[peer_rank].reset();
  } else if (*id == ZMQ_EVENT_DISCONNECTED && peer.ever_connected) {
    std::lock_guard lock(mutex_);
    if (!disconnected_since_[peer_rank]) disconnected_since_[peer_rank] = Clock::now();
  }
}

void ZmqTransport::send_heartbeats() {
  for (size_t p = 0; p < peers_.size(); ++p) {
    if (!peers_[p]) continue;
    {
      std::lock_guard lock(mutex_);
      if (peer_failure_[p] || said_goodbye_[p]) continue;
    }
    Peer& peer = *peers_[p];
    std::lock_guard send_lock(peer.send_mutex);
    if (peer.push_closed) continue;
    send_control_frame(peer, static_cast<int>(p), wire::MessageType::kHeartbeat, {});
  }
}

milliseconds ZmqTransport::until_silence_timeout() {
  std::lock_guard lock(mutex_);
  auto earliest = Clock::time_point::max();
  for (size_t p = 0; p < peers_.size(); ++p) {
    if (!peers_[p] || peer_failure_[p] || said_goodbye_[p]) continue;
    earliest = std::min(earliest, last_heard_[p] + options_.heartbeat_timeout);
  }
  if (earliest == Clock::time_point::max()) return options_.heartbeat_interval;
  // One millisecond past it: check_liveness() fails a silence longer than the timeout.
  return std::chrono::duration_cast<milliseconds>(earliest - Clock::now()) + milliseconds(1);
}

void ZmqTransport::check_liveness() {
  const auto now = Clock::now();
  const auto grace = 2 * options_.heartbeat_interval;
  std::vector<std::pair<int, std::string>> failed;
  {
    std::lock_guard lock(mutex_);
    for (size_t p = 0; p < peers_.size(); ++p) {
      if (!peers_[p] || peer_failure_[p] || said_goodbye_[p]) continue;
      if (disconnected_since_[p] && now - *disconnected_since_[p] >= grace) {
        failed.emplace_back(static_cast<int>(p),
                            "connection closed without a goodbye (the process exited or crashed)");
      } else if (now - last_heard_[p] > options_.heartbeat_timeout) {
        failed.emplace_back(static_cast<int>(p),
                            fmt::format("peer stopped responding (no heartbeat for {} ms)",
                                        options_.heartbeat_timeout.count()));
      }
    }
  }
  for (const auto& [p, problem] : failed) {
    fail_peer(p, problem);
    fail_transport(p, problem);
  }
}

void ZmqTransport::fail_transport(int culprit, const std::string& problem) {
  {
    std::lock_guard lock(mutex_);
    if (failure_) return;
    failure_ = Failure{culprit, problem};
  }
  notify_listener();
  cv_.notify_all();
}

void ZmqTransport::notify_listener() {
  std::optional<Failure> failure;
  {
    std::lock_guard lock(mutex_);
    failure = failure_;
  }
  if (!failure) return;
  std::lock_guard lock(listener_mutex_);
  if (listener_told_ || !listener_) return;
  listener_told_ = true;
  listener_(failure->peer, failure->problem);
}

void ZmqTransport::set_failure_listener(FailureListener listener) {
  {
    std::lock_guard lock(listener_mutex_);
    listener_ = std::move(listener);
    listener_told_ = false;
  }
  notify_listener();  // a transport that failed before hears of it now
}

void ZmqTransport::fail_peer(int peer_rank, const std::string& problem) {
  {
    std::lock_guard lock(mutex_);
    if (peer_failure_[peer_rank]) return;
    peer_failure_[peer_rank] = problem;
  }
  logger_.warn("rank {}: rank {} failed: {}", options_.rank, peer_rank, problem);
  cv_.notify_all();
}

void ZmqTransport::drop(const std::string& why) { drops_.add(why); }

}  // namespace dtrain::comm
