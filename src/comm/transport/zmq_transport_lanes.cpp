// ZmqTransport's tcp lanes (zmq_transport.h, "Tcp lanes"; tcp_lane.h) and
// the receive path that reads them: setting the lanes up in connect(),
// sending data frames over them, and take(), which waits for a message and,
// for a peer with a lane, reads that lane itself (into recv_into()'s and
// recv_parts()'s own buffers where it can).
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "comm/rendezvous/launch_env.h"
#include "comm/transport/tcp_lane.h"
#include "comm/transport/zmq_transport.h"
#include "comm/transport/zmq_transport_peer.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = Deadline::Clock;
using std::chrono::milliseconds;

// Longest wait of a lane reader (or of the lane set-up thread) between looks
// at failures, its deadline and its stop token.
constexpr milliseconds kLaneSlice{50};
// How long an accepted lane connection has to say hello.
constexpr milliseconds kHelloWait{5000};

milliseconds ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

// Reads all of `out` from the blocking-or-not socket `fd` before `deadline`.
bool read_fully(int fd, std::span<std::byte> out, Deadline deadline) {
  TcpLane lane(fd, -1);
  size_t got = 0;
  std::string problem;
  const auto status = lane.read_exact(
      out,
      [&] {
        if (deadline.expired()) return false;
        lane.readable(std::min(deadline.remaining(), kLaneSlice));
        return true;
      },
      &got, &problem);
  // `lane` closes fd on return; the caller dup()ed it.
  return status == TcpLane::ReadStatus::kDone;
}

}  // namespace

void ZmqTransport::start_lanes(const std::vector<PeerEndpoint>& table,
                               const std::vector<bool>& over_tcp) {
  const bool allowed = options_.tcp_lanes && !shaper_ && auth_.curve() == nullptr &&
                       std::any_of(over_tcp.begin(), over_tcp.end(), [](bool b) { return b; });
  int port = 0;
  if (allowed) {
    lanes_ = std::make_unique<TcpLanes>(options_.world_size, options_.lane_socket_buffer_bytes,
                                        [this](int peer, const auto& p) { fail_lane(peer, p); });
    port = lanes_->listen(options_.listen_host);
    lanes_->start();
  }
  // Every rank offers every peer its lane port, or 0 for none: a pair has a
  // lane when both offered one. Offers never wait for the peer.
  for (int p = 0; p < options_.world_size; ++p) {
    if (p == options_.rank) continue;
    lane_offered_[p] = allowed && over_tcp[p];
    ByteWriter w(sizeof(uint32_t));
    w.write_u32(lane_offered_[p] ? static_cast<uint32_t>(port) : 0);
    send_frame(*peers_[p], p, wire::MessageType::kData, kLaneOfferTag, w.bytes(), "connect",
               Deadline::after(options_.lane_connect_timeout));
  }
  if (lanes_) {
    lane_setup_ = std::jthread([this, table](std::stop_token stop) { set_up_lanes(stop, table); });
  }
}

void ZmqTransport::note_lane_frame(int sender, const zmq::message_t& payload) {
  if (payload.size() == sizeof(uint32_t)) {
    uint32_t port = 0;
    std::memcpy(&port, payload.data(), sizeof port);
    lane_offer_[sender] = port;
  } else if (payload.size() == 0) {
    lane_marker_[sender] = true;
  }
}

void ZmqTransport::set_up_lanes(const std::stop_token& stop,
                                const std::vector<PeerEndpoint>& table) {
  const int n = options_.world_size;
  std::vector<int> expected;  // lower ranks this rank offered a lane to: they connect
  for (int p = 0; p < options_.rank; ++p) {
    if (lane_offered_[p]) expected.push_back(p);
  }
  std::vector<bool> resolved(static_cast<size_t>(n), false);
  resolved[options_.rank] = true;
  while (!stop.stop_requested()) {
    std::vector<std::pair<int, uint32_t>> arrived;
    {
      std::unique_lock lock(mutex_);
      if (failure_) return;
      for (int p = 0; p < n; ++p) {
        if (resolved[p] || !lane_offer_[p]) continue;
        arrived.emplace_back(p, *lane_offer_[p]);
        resolved[p] = true;
      }
      if (arrived.empty() && expected.empty()) {
        if (std::all_of(resolved.begin(), resolved.end(), [](bool b) { return b; })) return;
        cv_.wait_for(lock, kLaneSlice);
        continue;
      }
    }
    for (const auto& [p, port] : arrived) {
      if (port == 0 || !lane_offered_[p]) {
        std::erase(expected, p);
      } else if (p > options_.rank) {
        connect_lane(p, table[p], port, stop);
      }
    }
    if (expected.empty()) {
      lanes_->stop_listening();  // nobody else may connect
      continue;
    }
    const int fd = lanes_->accept_one(Deadline::after(kLaneSlice));
    if (fd >= 0) accept_lane(fd, expected);
  }
}

void ZmqTransport::connect_lane(int peer, const PeerEndpoint& endpoint, uint32_t port,
                                const std::stop_token& stop) {
  int fd = -1;
  try {
    const std::string& at = endpoint.tcp_endpoint;  // "tcp://host:port"
    const HostPort host = parse_host_port(at.substr(at.find("://") + 3), "peer tcp endpoint");
    fd = TcpLanes::connect_to(peer, host.host, static_cast<int>(port),
                              Deadline::after(options_.lane_connect_timeout), stop);
  } catch (const Error& e) {  // CommError, or ConfigError for an endpoint without host:port
    logger_.warn("rank {}: no tcp lane to rank {}, its data stays on ZeroMQ: {}", options_.rank,
                 peer, e.what());
    return;
  }
  // The higher rank's challenge first, then the lower rank's hello:
  // sequence 0, the challenge as its payload (under the MAC). A new
  // connection's send buffer takes the 104 bytes at once.
  std::array<std::byte, kLaneChallengeBytes> challenge{};
  const int reader = dup(fd);
  if (reader < 0 || !read_fully(reader, challenge, Deadline::after(kHelloWait))) {
    logger_.warn("rank {}: rank {} sent no tcp lane challenge; its data stays on ZeroMQ",
                 options_.rank, peer);
    close(fd);
    return;
  }
  const wire::HeaderBytes header =
      frame_header(peer, wire::MessageType::kData, 0, kLaneOfferTag, challenge);
  std::array<std::byte, wire::kHeaderBytes + kLaneChallengeBytes> hello{};
  std::memcpy(hello.data(), header.data(), header.size());
  std::memcpy(hello.data() + header.size(), challenge.data(), challenge.size());
  const ssize_t sent = ::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL);
  if (sent != static_cast<ssize_t>(hello.size())) {
    logger_.warn("rank {}: tcp lane hello to rank {} not sent ({}); its data stays on ZeroMQ",
                 options_.rank, peer, sent < 0 ? std::strerror(errno) : "short write");
    close(fd);
    return;
  }
  lanes_->add(peer, fd);
  switch_to_lane(peer);
}

void ZmqTransport::accept_lane(int fd, std::vector<int>& expected) {
  // A fresh challenge per connection: a hello recorded from another one
  // (an earlier run with the same job name and secret) carries another.
  std::array<std::byte, kLaneChallengeBytes> challenge{};
  if (getrandom(challenge.data(), challenge.size(), 0) != static_cast<ssize_t>(challenge.size()) ||
      ::send(fd, challenge.data(), challenge.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(challenge.size())) {
    drop(fmt::format("a tcp lane connection: challenge not sent ({})", std::strerror(errno)));
    close(fd);
    return;
  }
  wire::HeaderBytes hello{};
  std::array<std::byte, kLaneChallengeBytes> answer{};
  const int reader = dup(fd);
  if (reader < 0 || !read_fully(reader, hello, Deadline::after(kHelloWait))) {
    drop("a tcp lane connection that sent no hello");
    close(fd);
    return;
  }
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(options_.world_size),
                                 static_cast<uint32_t>(options_.rank), kLaneChallengeBytes};
  try {
    const wire::FrameHeader h = wire::decode_header(hello, limits, auth_);
    if (h.payload_bytes != kLaneChallengeBytes) {
      throw DataError(
          fmt::format("tcp lane hello from rank {} carries {} bytes, not the {}-byte "
                      "challenge",
                      h.sender, h.payload_bytes, kLaneChallengeBytes));
    }
    const int answer_reader = dup(fd);
    if (answer_reader < 0 || !read_fully(answer_reader, answer, Deadline::after(kHelloWait))) {
      throw DataError(
          fmt::format("tcp lane hello from rank {} ends before its challenge", h.sender));
    }
    wire::check_payload(h, hello, answer, auth_);
    if (answer != challenge) {
      throw DataError(
          fmt::format("tcp lane hello from rank {} answers another challenge (a "
                      "replayed hello)",
                      h.sender));
    }
    const auto it = std::find(expected.begin(), expected.end(), static_cast<int>(h.sender));
    if (h.type != wire::MessageType::kData || h.tag != kLaneOfferTag || h.sequence != 0 ||
        it == expected.end()) {
      throw DataError(
          fmt::format("tcp lane hello from rank {} (type {}, tag {}, sequence {}) is "
                      "not one this rank expects",
                      h.sender, to_string(h.type), h.tag, h.sequence));
    }
    expected.erase(it);
    lanes_->add(static_cast<int>(h.sender), fd);
    switch_to_lane(static_cast<int>(h.sender));
  } catch (const DataError& e) {
    drop(fmt::format("a tcp lane connection: {}", e.what()));
    close(fd);
  }
}

void ZmqTransport::switch_to_lane(int peer) {
  Peer& link = *peers_[peer];
  {
    std::lock_guard gate(link.lane_gate);
    bool queued = false;
    {
      std::lock_guard send_lock(link.send_mutex);
      try {
        queued = !link.push_closed &&
                 send_control_frame(link, peer, wire::MessageType::kData, {}, kLaneOfferTag);
      } catch (const zmq::error_t& e) {
        logger_.debug("rank {}: lane marker to rank {} not sent: {}", options_.rank, peer,
                      e.what());
      }
    }
    // Without the marker the peer would not read the lane: stay on ZeroMQ.
    if (queued) link.lane_sending.store(true, std::memory_order_release);
  }
  { std::lock_guard lock(mutex_); }  // a waiter between its check and its wait sees the notify
  cv_.notify_all();                  // a reader waiting for this lane looks again
}

bool ZmqTransport::wait_for_lanes(int peers, Deadline deadline) {
  std::unique_lock lock(mutex_);
  return cv_.wait_until(lock, deadline.at(), [&] {
    int both = 0;
    for (size_t p = 0; p < peers_.size(); ++p) {
      if (peers_[p] && peers_[p]->lane_sending.load(std::memory_order_acquire) &&
          lane_open(static_cast<int>(p))) {
        ++both;
      }
    }
    return both >= peers;
  });
}

bool ZmqTransport::lane_open(int peer) const {
  return lane_marker_[peer] && lanes_ && lanes_->lane(peer) != nullptr && !lane_closed_[peer];
}

void ZmqTransport::send_parts(int peer, uint64_t tag, std::span<const std::byte> head,
                              std::span<const std::byte> body, const std::string& what,
                              Deadline deadline) {
  check_send(peer, head.size() + body.size(), what);
  if (!peers_[peer]->lane_sending.load(std::memory_order_acquire)) {
    // ZeroMQ takes one buffer (send_owned() may still find the lane switched
    // on under its gate).
    send_owned(peer, tag, OwnedBuffer::join(head, body), what, deadline);
    return;
  }
  send_lane(peer, tag, head, body, nullptr, what);
}

void ZmqTransport::send_lane(int peer, uint64_t tag, std::span<const std::byte> head,
                             std::span<const std::byte> body, OwnedBuffer* owned,
                             const std::string& what) {
  const auto problem = lanes_->send(
      peer,
      [&](uint64_t sequence) {
        return frame_header(peer, wire::MessageType::kData, sequence, tag, head, body);
      },
      head, body, owned);
  if (problem) {
    fail_lane(peer, *problem);
    fail_call(peer, what, *problem);
  }
}

void ZmqTransport::fail_lane(int peer, const std::string& problem) {
  fail_peer(peer, problem);
  fail_transport(peer, problem);
}

std::optional<wire::FrameHeader> ZmqTransport::check_lane_header(
    int peer, std::span<const std::byte, wire::kHeaderBytes> header) {
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(options_.world_size),
                                 static_cast<uint32_t>(options_.rank), options_.max_message_bytes};
  wire::FrameHeader h;
  try {
    h = wire::decode_header(header, limits, auth_);
  } catch (const DataError& e) {
    fail_lane(peer, fmt::format("sent an invalid frame on its tcp lane: {}", e.what()));
    return std::nullopt;
  }
  const uint64_t expected = next_lane_sequence_[peer];
  if (h.sender != static_cast<uint32_t>(peer) || h.type != wire::MessageType::kData ||
      h.sequence != expected) {
    fail_lane(peer, fmt::format("sent an unexpected frame on its tcp lane: {} from rank {} with "
                                "sequence {} (expected data from rank {}, sequence {})",
                                to_string(h.type), h.sender, h.sequence, peer, expected));
    return std::nullopt;
  }
  return h;
}

bool ZmqTransport::read_lane(int peer, uint64_t tag, Deadline deadline, ReceiveTarget* target) {
  TcpLane& lane = *lanes_->lane(peer);
  // A short spin first (ZmqTransportOptions::lane_spin). While it sleeps,
  // the reader also writes this rank's queued frames as their sockets drain
  // (TcpLanes::wait_readable).
  if (!lane.spin_readable(options_.lane_spin) &&
      !lanes_->wait_readable(peer, std::min(kLaneSlice, deadline.remaining()))) {
    return false;
  }
  const auto keep_waiting = [&] {
    {
      std::lock_guard lock(mutex_);
      if (failure_ || peer_failure_[peer]) return false;
    }
    if (deadline.expired()) return false;
    lanes_->wait_readable(peer, std::min(kLaneSlice, deadline.remaining()));
    return true;
  };
  wire::HeaderBytes header{};
  size_t got = 0;
  std::string problem;
  auto status = lane.read_exact(header, keep_waiting, &got, &problem);
  if (status == TcpLane::ReadStatus::kClosed && got == 0) {
    std::lock_guard lock(mutex_);
    lane_closed_[peer] = true;  // ZeroMQ's goodbye or disconnect tells which it was
    return false;
  }
  if (status == TcpLane::ReadStatus::kStopped) return false;  // the caller's deadline or a failure
  if (status != TcpLane::ReadStatus::kDone) {
    fail_lane(peer, status == TcpLane::ReadStatus::kFailed
                        ? problem
                        : fmt::format("closed its tcp lane mid-frame ({} of {} header bytes)", got,
                                      wire::kHeaderBytes));
    return false;
  }
  const std::optional<wire::FrameHeader> h = check_lane_header(peer, header);
  if (!h) return false;
  // The awaited frame goes straight into the caller's buffer: take() found
  // no earlier message on `tag` queued, and only this reader queues more.
  const bool direct = target != nullptr && h->tag == tag && h->payload_bytes == target->bytes();
  if (direct && target->fold != nullptr) {
    if (!read_lane_folded(peer, *h, header, keep_waiting, *target)) return false;
  } else {
    OwnedBuffer body = OwnedBuffer::allocate(direct ? 0 : h->payload_bytes);
    const std::span<std::byte> head = direct ? target->head : std::span<std::byte>();
    const std::span<std::byte> rest = direct ? target->body : body.bytes();
    status = lane.read_exact(head, keep_waiting, &got, &problem);
    size_t got_rest = 0;
    if (status == TcpLane::ReadStatus::kDone) {
      status = lane.read_exact(rest, keep_waiting, &got_rest, &problem);
    }
    if (status != TcpLane::ReadStatus::kDone) {
      const auto failed = TcpLane::read_problem(status, problem, got + got_rest, h->payload_bytes);
      if (failed) fail_lane(peer, *failed);
      return false;
    }
    try {
      wire::check_payload(*h, header, head, rest, auth_);
    } catch (const DataError& e) {
      fail_lane(peer,
                fmt::format("sent a frame that failed its checks on its tcp lane: {}", e.what()));
      return false;
    }
    if (!direct) {
      ++next_lane_sequence_[peer];
      queue_lane_message(peer, h->tag, std::move(body));
      return false;
    }
  }
  ++next_lane_sequence_[peer];
  std::lock_guard lock(mutex_);
  if (peer_failure_[peer]) return false;
  last_heard_[peer] = Clock::now();
  return true;
}

void ZmqTransport::queue_lane_message(int peer, uint64_t tag, OwnedBuffer body) {
  const size_t size = body.size;
  const size_t capacity = body.capacity();
  zmq::message_t message;
  if (size > 0) {
    message = zmq::message_t(
        body.data.release(), size,
        [](void* data, void* hint) {
          release_owned_buffer(static_cast<std::byte*>(data), reinterpret_cast<uintptr_t>(hint));
        },
        reinterpret_cast<void*>(static_cast<uintptr_t>(capacity)));
  }
  {
    std::lock_guard lock(mutex_);
    if (peer_failure_[peer]) return;
    last_heard_[peer] = Clock::now();
    queues_[{peer, tag}].push_back(std::move(message));
  }
  cv_.notify_all();
}

void ZmqTransport::recv_into(int peer, uint64_t tag, std::span<std::byte> out,
                             const std::string& what, Deadline deadline) {
  recv_parts(peer, tag, {}, out, what, deadline, [&](std::span<const std::byte> message) {
    fail_call(peer, what,
              fmt::format("message on tag {} is {} bytes, the receive buffer is {} bytes", tag,
                          message.size(), out.size()));
  });
}

void ZmqTransport::recv_parts(int peer, uint64_t tag, std::span<std::byte> head,
                              std::span<std::byte> body, const std::string& what, Deadline deadline,
                              const MessageVisitor& mismatch) {
  ReceiveTarget target{head, body};
  const zmq::message_t message = take(peer, tag, what, deadline, &target);
  if (!target.filled) copy_parts(bytes_of(message), head, body, mismatch);
}

zmq::message_t ZmqTransport::take(int peer, uint64_t tag, const std::string& what,
                                  Deadline deadline, ReceiveTarget* target) {
  check_peer_arg(peer, what);
  const auto start = Clock::now();
  std::unique_lock lock(mutex_);
  while (true) {
    if (failure_) {
      const Failure f = *failure_;
      lock.unlock();
      throw CommError(f.peer, what, f.problem);
    }
    if (auto it = queues_.find({peer, tag}); it != queues_.end() && !it->second.empty()) {
      zmq::message_t message = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) queues_.erase(it);
      return message;
    }
    std::optional<std::string> problem;
    if (peer_failure_[peer])
      problem = *peer_failure_[peer];
    else if (said_goodbye_[peer] && !lane_open(peer)) {
      problem =
          fmt::format("the peer closed its transport before sending the message on tag {}", tag);
    }
    if (problem) {
      lock.unlock();
      fail_call(peer, what, *problem);
    }
    if (deadline.expired()) {
      TimeoutError error(peer, what, ms_since(start),
                         fmt::format("a message from rank {} on tag {}", peer, tag));
      if (!failure_) failure_ = Failure{peer, error.what()};
      lock.unlock();
      notify_listener();
      cv_.notify_all();
      throw error;
    }
    if (lane_open(peer) && !lane_reading_[peer]) {
      // This caller reads the lane (one frame, or one wait slice), then
      // hands the reader's role on.
      lane_reading_[peer] = true;
      lock.unlock();
      bool filled = false;
      try {
        filled = read_lane(peer, tag, deadline, target);
      } catch (...) {
        lock.lock();
        lane_reading_[peer] = false;
        cv_.notify_all();
        throw;
      }
      lock.lock();
      lane_reading_[peer] = false;
      cv_.notify_all();
      if (filled) {
        target->filled = true;
        return zmq::message_t();
      }
      continue;
    }
    if (deadline.is_never()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, deadline.at());
    }
  }
}

}  // namespace dtrain::comm
