// ZmqPeerLink's I/O thread: the poll loop, sending, receiving and
// dispatching frames, answering calls, liveness and the monitor events. The
// contracts are in zmq_peer_link.h.
#include <fmt/format.h>

#include <algorithm>
#include <exception>

#include "comm/peer/zmq_peer_link.h"
#include "comm/peer/zmq_peer_link_frames.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = std::chrono::steady_clock;
using peer_frames::kChannelBytes;
using peer_frames::kReplyFailed;
using peer_frames::kReplyOk;
using peer_frames::kServiceBytes;
using peer_frames::kStatusBytes;
using wire::MessageType;

// A reply's status byte then `body`.
std::vector<std::byte> after_status(uint8_t status, std::span<const std::byte> body) {
  ByteWriter writer(kStatusBytes + body.size());
  writer.write_u8(status);
  writer.write_bytes(body);
  return writer.take();
}

}  // namespace

std::chrono::milliseconds ZmqPeerLink::disconnect_grace() const {
  return options_.disconnect_grace.count() > 0 ? options_.disconnect_grace
                                               : 2 * options_.heartbeat_interval;
}

void ZmqPeerLink::run_io(std::stop_token stop) {
  const int n = options_.world_size;
  for (int p = 0; p < n; ++p) {
    if (p == options_.rank) continue;
    Outgoing hello{p, MessageType::kPeerHello, 0, {}};
    send_now(hello);
    bytes_sent_ += wire::kHeaderBytes;
  }
  auto next_heartbeat = Clock::now() + options_.heartbeat_interval;
  std::vector<zmq::pollitem_t> items;
  std::vector<int> item_peer;
  std::vector<Event> events;
  while (!stop.stop_requested()) {
    items.clear();
    item_peer.clear();
    items.push_back(router_->poll_item());
    items.push_back(zmq::pollitem_t{nullptr, wake_fd_, ZMQ_POLLIN, 0});
    for (int p = 0; p < n; ++p) {
      if (p == options_.rank) continue;
      items.push_back(
          zmq::pollitem_t{monitors_[static_cast<size_t>(p)].handle(), 0, ZMQ_POLLIN, 0});
      item_peer.push_back(p);
    }
    const auto timeout = std::max(
        std::chrono::milliseconds(1),
        std::chrono::duration_cast<std::chrono::milliseconds>(next_heartbeat - Clock::now()));
    zmq::poll(items.data(), items.size(), timeout);
    if (items[1].revents & ZMQ_POLLIN) {
      uint64_t count = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &count, sizeof count);
    }
    flush_outbox();
    // Connection events first: a replacement's hello read in this turn
    // then clears its predecessor's disconnection instead of following it.
    for (size_t i = 2; i < items.size(); ++i) {
      if (items[i].revents & ZMQ_POLLIN) read_monitor(item_peer[i - 2]);
    }
    // At most 1024 frames per turn, so heartbeats and liveness keep going.
    for (int i = 0; i < 1024; ++i) {
      std::optional<wire::Frame> frame = router_->try_receive();
      if (!frame) break;
      handle_frame(*frame, events);
      fire(events);
    }
    if (Clock::now() >= next_heartbeat) {
      std::vector<int> targets;
      {
        std::lock_guard lock(mutex_);
        for (int p = 0; p < n; ++p) {
          const Status status = peers_[static_cast<size_t>(p)].status;
          if (p != options_.rank && !left_ &&
              (status == Status::kAlive || status == Status::kJoining)) {
            targets.push_back(p);
          }
        }
      }
      for (const int p : targets) {
        Outgoing heartbeat{p, MessageType::kHeartbeat, 0, {}};
        send_now(heartbeat);
        bytes_sent_ += wire::kHeaderBytes;
      }
      next_heartbeat = Clock::now() + options_.heartbeat_interval;
    }
    check_liveness(events);
    fire(events);
  }
  bool crashed = false;
  {
    std::lock_guard lock(mutex_);
    crashed = crashed_;
  }
  if (!crashed) {
    flush_outbox();
    await_reconnections();
  }
}

void ZmqPeerLink::await_reconnections() {
  const Deadline deadline = Deadline::after(options_.linger);
  const int n = options_.world_size;
  for (;;) {
    std::vector<zmq::pollitem_t> items;
    std::vector<int> item_peer;
    {
      std::lock_guard lock(mutex_);
      for (int p = 0; p < n; ++p) {
        const PeerState& peer = peers_[static_cast<size_t>(p)];
        if (p != options_.rank && peer.link_down && peer.status == Status::kAlive) {
          items.push_back(
              zmq::pollitem_t{monitors_[static_cast<size_t>(p)].handle(), 0, ZMQ_POLLIN, 0});
          item_peer.push_back(p);
        }
      }
    }
    if (items.empty() || deadline.expired()) return;
    wire::poll_until(items, deadline);
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].revents & ZMQ_POLLIN) read_monitor(item_peer[i]);
    }
  }
}

void ZmqPeerLink::send_now(Outgoing& frame) {
  auto& dealer = dealers_[static_cast<size_t>(frame.peer)];
  if (!dealer) return;
  wire::FrameHeader header;
  header.type = frame.type;
  header.receiver = static_cast<uint32_t>(frame.peer);
  header.sequence = incarnation_;
  header.tag = frame.tag;
  if (!dealer->send({}, header, std::move(frame.payload))) {
    logger_.warn("peer link of rank {}: ZeroMQ refused a {} frame to rank {}", options_.rank,
                 wire::to_string(frame.type), frame.peer);
  }
}

void ZmqPeerLink::flush_outbox() {
  std::deque<Outgoing> ready;
  {
    std::lock_guard lock(outbox_mutex_);
    ready.swap(outbox_);
  }
  for (auto& frame : ready) send_now(frame);
}

bool ZmqPeerLink::admit_locked(int from, uint64_t incarnation, MessageType type,
                               std::vector<Event>& events) {
  PeerState& peer = peers_[static_cast<size_t>(from)];
  if (from == options_.rank) {
    ++stale_drops_;
    return false;
  }
  if (incarnation != peer.incarnation) {
    const bool first = peer.incarnation == 0;
    if (!first && type != MessageType::kPeerHello) {
      ++stale_drops_;  // a late frame of a process since replaced
      return false;
    }
    // A new process for the rank (or the first frame heard from it).
    const bool was_gone = peer.status == Status::kLost || peer.status == Status::kLeft;
    if (!first && !was_gone) {
      set_gone_locked(from, Status::kLost,
                      fmt::format("rank {} was replaced by a new process", from), events);
    }
    peer.inbox.clear();
    peer.incarnation = incarnation;
    peer.disconnected_since.reset();
    if (!first || was_gone) {
      ++peer.epoch;
      events.push_back({from, PeerEvent::kJoined,
                        fmt::format("rank {} joined (incarnation {:016x})", from, incarnation)});
    }
    peer.status = Status::kAlive;
    changed_.notify_all();
  }
  if (peer.status == Status::kLost || peer.status == Status::kLeft) {
    ++stale_drops_;  // the old process of a lost rank, or after its goodbye
    return false;
  }
  peer.status = Status::kAlive;
  peer.last_heard = Clock::now();
  return true;
}

void ZmqPeerLink::handle_frame(wire::Frame& frame, std::vector<Event>& events) {
  const int from = static_cast<int>(frame.header.sender);
  const MessageType type = frame.header.type;
  std::unique_lock lock(mutex_);
  if (!admit_locked(from, frame.header.sequence, type, events)) return;
  PeerState& peer = peers_[static_cast<size_t>(from)];
  const std::span<const std::byte> payload = frame.payload();
  switch (type) {
    case MessageType::kPeerHello:
    case MessageType::kHeartbeat:
      return;
    case MessageType::kGoodbye:
      set_gone_locked(from, Status::kLeft, fmt::format("rank {} said goodbye", from), events);
      return;
    case MessageType::kPeerData: {
      if (payload.size() < kChannelBytes) {
        router_->drop(fmt::format("peer data from rank {} shorter than its channel", from));
        return;
      }
      const uint32_t channel = ByteReader(payload, "peer data").read_u32("channel");
      peer.inbox[channel].emplace(
          frame.header.tag, std::vector<std::byte>(payload.begin() + kChannelBytes, payload.end()));
      changed_.notify_all();
      return;
    }
    case MessageType::kPeerReply:
      take_reply_locked(from, frame.header.tag, payload);
      return;
    case MessageType::kPeerCall:
      lock.unlock();
      answer_call(from, frame.header.tag, payload);
      return;
    default:
      return;
  }
}

void ZmqPeerLink::take_reply_locked(int from, uint64_t id, std::span<const std::byte> payload) {
  auto pending = calls_.find(id);
  // The caller gave up, or called the process this one replaced.
  if (pending == calls_.end() || pending->second.peer != from ||
      pending->second.epoch != peers_[static_cast<size_t>(from)].epoch) {
    return;
  }
  if (payload.size() < kStatusBytes) {
    router_->drop(fmt::format("peer reply from rank {} without a status", from));
    return;
  }
  const auto body = payload.subspan(kStatusBytes);
  pending->second.done = true;
  if (std::to_integer<uint8_t>(payload[0]) == kReplyOk) {
    pending->second.reply.assign(body.begin(), body.end());
  } else {
    pending->second.error = std::string(reinterpret_cast<const char*>(body.data()), body.size());
  }
  changed_.notify_all();
}

void ZmqPeerLink::answer_call(int from, uint64_t id, std::span<const std::byte> payload) {
  Handler handler;
  bool refused = false;
  {
    std::lock_guard lock(mutex_);
    handler = handler_;
    refused = left_;
  }
  std::vector<std::byte> reply;
  std::string failure;
  if (payload.size() < kServiceBytes) {
    failure = "the call carried no service";
  } else if (refused) {
    failure = fmt::format("rank {} has left the job", options_.rank);
  } else if (!handler) {
    failure = fmt::format("rank {} has no handler set", options_.rank);
  } else {
    try {
      const uint32_t service = ByteReader(payload, "peer call").read_u32("service");
      reply = handler(from, service, payload.subspan(kServiceBytes));
    } catch (const std::exception& e) {
      failure = e.what();
      if (failure.empty()) failure = "unknown error";
    } catch (...) {
      failure = "unknown exception";
    }
  }
  Outgoing frame{from, MessageType::kPeerReply, id,
                 failure.empty() ? after_status(kReplyOk, reply)
                                 : after_status(kReplyFailed, std::as_bytes(std::span(failure)))};
  enqueue(std::move(frame), true);
}

void ZmqPeerLink::read_monitor(int peer) {
  auto& monitor = monitors_[static_cast<size_t>(peer)];
  for (;;) {
    zmq::message_t event;
    zmq::message_t address;
    if (!monitor.recv(event, zmq::recv_flags::dontwait)) return;
    if (event.more()) (void)monitor.recv(address, zmq::recv_flags::dontwait);
    const std::optional<uint16_t> id = wire::monitor_event(event);
    if (!id) continue;
    std::lock_guard lock(mutex_);
    PeerState& state = peers_[static_cast<size_t>(peer)];
    // DISCONNECTED comes only for a connection that was up (a refused
    // connect is CONNECT_RETRIED), whether or not its CONNECTED came before
    // the monitor started.
    if (*id == ZMQ_EVENT_CONNECTED) {
      state.disconnected_since.reset();
      state.link_down = false;
    } else if (*id == ZMQ_EVENT_DISCONNECTED) {
      state.link_down = true;
      if (!state.disconnected_since) state.disconnected_since = Clock::now();
    }
  }
}

void ZmqPeerLink::check_liveness(std::vector<Event>& events) {
  const auto now = Clock::now();
  std::lock_guard lock(mutex_);
  for (int p = 0; p < options_.world_size; ++p) {
    if (p == options_.rank) continue;
    PeerState& peer = peers_[static_cast<size_t>(p)];
    if (peer.status == Status::kJoining && now - connected_at_ >= options_.join_timeout) {
      set_gone_locked(p, Status::kLost,
                      fmt::format("never heard from rank {} within the join timeout of {} ms", p,
                                  options_.join_timeout.count()),
                      events);
    } else if (peer.status == Status::kAlive &&
               now - peer.last_heard >= options_.heartbeat_timeout) {
      set_gone_locked(p, Status::kLost,
                      fmt::format("rank {} stopped responding (nothing for {} ms)", p,
                                  options_.heartbeat_timeout.count()),
                      events);
    } else if ((peer.status == Status::kAlive || peer.status == Status::kJoining) &&
               peer.disconnected_since && now - *peer.disconnected_since >= disconnect_grace()) {
      // Late frames of the dead process do not clear it; a reconnection
      // (CONNECTED) or a replacement's hello does.
      set_gone_locked(p, Status::kLost,
                      fmt::format("rank {}'s connection closed without a goodbye", p), events);
    }
  }
}

void ZmqPeerLink::set_gone_locked(int peer, Status status, const std::string& reason,
                                  std::vector<Event>& events) {
  PeerState& state = peers_[static_cast<size_t>(peer)];
  state.status = status;
  state.disconnected_since.reset();
  ++state.epoch;
  events.push_back({peer, status == Status::kLeft ? PeerEvent::kLeft : PeerEvent::kLost, reason});
  logger_.info("peer link of rank {}: {}", options_.rank, reason);
  changed_.notify_all();
}

void ZmqPeerLink::fire(std::vector<Event>& events) {
  if (events.empty()) return;
  Listener listener;
  {
    std::lock_guard lock(mutex_);
    listener = listener_;
  }
  if (listener) {
    for (const Event& event : events) {
      try {
        listener(event.peer, event.event, event.reason);
      } catch (const std::exception& e) {
        logger_.warn("peer link of rank {}: the listener threw: {}", options_.rank, e.what());
      }
    }
  }
  events.clear();
}

}  // namespace dtrain::comm
