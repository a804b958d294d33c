#include "comm/peer/zmq_peer_link.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <random>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = std::chrono::steady_clock;
using wire::MessageType;

constexpr size_t kChannelBytes = 4;  // peer data: u32 channel
constexpr size_t kServiceBytes = 4;  // peer call: u32 service
constexpr size_t kStatusBytes = 1;   // peer reply: u8 status
constexpr uint8_t kReplyOk = 0;
constexpr uint8_t kReplyFailed = 1;

std::chrono::milliseconds since(Clock::time_point started) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
}

uint64_t random_incarnation() {
  std::random_device device;
  uint64_t id = 0;
  while (id == 0) id = (uint64_t{device()} << 32) ^ device();
  return id;
}

// A u32 (channel, service) then `body`, as the byte codec writes it.
std::vector<std::byte> after_u32(uint32_t value, std::span<const std::byte> body) {
  ByteWriter writer(sizeof value + body.size());
  writer.write_u32(value);
  writer.write_bytes(body);
  return writer.take();
}

// A reply's status byte then `body`.
std::vector<std::byte> after_status(uint8_t status, std::span<const std::byte> body) {
  ByteWriter writer(kStatusBytes + body.size());
  writer.write_u8(status);
  writer.write_bytes(body);
  return writer.take();
}

Deadline::Clock::time_point wait_slice(Deadline deadline) {
  // Waits are bounded by the deadline, or sliced by an hour for never().
  return deadline.is_never() ? Clock::now() + std::chrono::hours(1) : deadline.at();
}

}  // namespace

ZmqPeerLink::ZmqPeerLink(ZmqPeerLinkOptions options, JobAuth auth, Logger& logger)
    : options_(std::move(options)),
      auth_(std::move(auth)),
      logger_(logger),
      incarnation_(options_.incarnation != 0 ? options_.incarnation : random_incarnation()),
      context_(1) {
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size) {
    throw UsageError(fmt::format("peer link: rank {} outside world of size {}", options_.rank,
                                 options_.world_size));
  }
  if (options_.heartbeat_interval.count() <= 0 ||
      options_.heartbeat_timeout <= options_.heartbeat_interval) {
    throw UsageError(fmt::format(
        "peer link: heartbeat timeout {} ms must exceed the heartbeat interval {} ms (> 0)",
        options_.heartbeat_timeout.count(), options_.heartbeat_interval.count()));
  }
  peers_.resize(static_cast<size_t>(options_.world_size));
  wire::FramedSocketOptions inbound;
  inbound.name = fmt::format("peer link of rank {}", options_.rank);
  inbound.rank = static_cast<uint32_t>(options_.rank);
  inbound.limits.job_id = auth_.job_id();
  inbound.limits.world_size = static_cast<uint32_t>(options_.world_size);
  inbound.limits.receiver = static_cast<uint32_t>(options_.rank);
  inbound.limits.max_payload_bytes = options_.max_message_bytes + kChannelBytes;
  inbound.accepted = {MessageType::kHeartbeat, MessageType::kGoodbye,  MessageType::kPeerHello,
                      MessageType::kPeerData,  MessageType::kPeerCall, MessageType::kPeerReply};
  inbound.unbounded_queues = true;
  router_ = std::make_unique<wire::FramedSocket>(context_, wire::FramedSocket::Role::kRouter,
                                                 options_.bind_endpoint, std::move(inbound), auth_,
                                                 logger_);
  endpoint_ = router_->endpoint();
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    throw CommError(options_.rank, "peer link", fmt::format("eventfd: {}", std::strerror(errno)));
  }
  if (options_.link) shaper_ = std::make_unique<LinkShaper>(*options_.link);
  if (!options_.peer_endpoints.empty()) connect(options_.peer_endpoints);
}

ZmqPeerLink::~ZmqPeerLink() {
  leave();
  // The shaper delivers what it holds (into the outbox) before the I/O
  // thread's last flush.
  shaper_.reset();
  if (io_.joinable()) {
    io_.request_stop();
    wake_io();
    io_.join();
  }
  for (size_t p = 0; p < dealers_.size(); ++p) {
    if (dealers_[p]) zmq_socket_monitor(dealers_[p]->socket().handle(), nullptr, 0);
  }
  monitors_.clear();
  dealers_.clear();
  router_.reset();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ZmqPeerLink::connect(const std::vector<std::string>& endpoints) {
  if (endpoints.size() != static_cast<size_t>(options_.world_size)) {
    throw UsageError(fmt::format("peer link of rank {}: {} endpoints for a world of {}",
                                 options_.rank, endpoints.size(), options_.world_size));
  }
  {
    std::lock_guard lock(mutex_);
    if (connected_) throw UsageError("peer link: connect() called twice");
    connected_ = true;
  }
  const int n = options_.world_size;
  dealers_.resize(static_cast<size_t>(n));
  monitors_.resize(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    if (p == options_.rank) continue;
    wire::FramedSocketOptions outbound;
    outbound.name = fmt::format("peer link of rank {} to rank {}", options_.rank, p);
    outbound.peer = p;
    outbound.rank = static_cast<uint32_t>(options_.rank);
    outbound.limits.job_id = auth_.job_id();
    outbound.limits.world_size = static_cast<uint32_t>(n);
    outbound.accepted = {MessageType::kHeartbeat};  // a DEALER here never reads
    outbound.linger = options_.linger;
    outbound.unbounded_queues = true;
    auto& dealer = dealers_[static_cast<size_t>(p)];
    dealer = std::make_unique<wire::FramedSocket>(context_, wire::FramedSocket::Role::kDealer,
                                                  endpoints[static_cast<size_t>(p)],
                                                  std::move(outbound), auth_, logger_);
    const std::string monitor_address =
        fmt::format("inproc://dtrain-peer-monitor-{:x}-{}", reinterpret_cast<uintptr_t>(this), p);
    if (zmq_socket_monitor(dealer->socket().handle(), monitor_address.c_str(),
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0) {
      throw CommError(p, "peer link connect",
                      fmt::format("cannot monitor the socket: {}", zmq_strerror(zmq_errno())));
    }
    auto& monitor = monitors_[static_cast<size_t>(p)];
    monitor = zmq::socket_t(context_, zmq::socket_type::pair);
    monitor.set(zmq::sockopt::linger, 0);
    monitor.connect(monitor_address);
  }
  connected_at_ = Clock::now();
  {
    std::lock_guard lock(mutex_);
    for (auto& peer : peers_) peer.last_heard = connected_at_;
  }
  io_ = std::jthread([this](std::stop_token stop) { run_io(stop); });
}

void ZmqPeerLink::adopt_coordinator(std::unique_ptr<RendezvousServer> coordinator) {
  coordinator_ = std::move(coordinator);
}

// ---- calls from any thread --------------------------------------------------

void ZmqPeerLink::check_usable(int peer, const std::string& what) const {
  if (peer < 0 || peer >= options_.world_size || peer == options_.rank) {
    throw UsageError(fmt::format("{}: peer {} is not another rank of a world of {} (rank {})", what,
                                 peer, options_.world_size, options_.rank));
  }
  std::lock_guard lock(mutex_);
  if (crashed_) {
    throw CommError(options_.rank, what, "this link was abandoned (crash_for_test)");
  }
  if (left_) throw CommError(options_.rank, what, "this rank left the job (leave())");
  if (!connected_) throw UsageError(fmt::format("{}: peer link used before connect()", what));
}

void ZmqPeerLink::check_alive_locked(int peer, const std::string& what) const {
  const PeerState& state = peers_[static_cast<size_t>(peer)];
  if (state.status == Status::kLost) {
    throw PeerLostError(peer, what, fmt::format("rank {} is lost", peer));
  }
  if (state.status == Status::kLeft) {
    throw PeerLostError(peer, what, fmt::format("rank {} left (said goodbye)", peer));
  }
}

std::optional<std::vector<std::byte>> ZmqPeerLink::take_locked(int peer, uint32_t channel,
                                                               uint64_t step) {
  auto& inbox = peers_[static_cast<size_t>(peer)].inbox;
  auto queue = inbox.find(channel);
  if (queue == inbox.end()) return std::nullopt;
  auto& by_step = queue->second;
  by_step.erase(by_step.begin(), by_step.lower_bound(step));
  std::optional<std::vector<std::byte>> message;
  if (!by_step.empty() && by_step.begin()->first == step) {
    message = std::move(by_step.begin()->second);
    by_step.erase(by_step.begin());
  }
  if (by_step.empty()) inbox.erase(queue);
  return message;
}

void ZmqPeerLink::check_drained_locked(int peer, uint32_t channel, uint64_t step,
                                       const std::string& what) const {
  const PeerState& state = peers_[static_cast<size_t>(peer)];
  if (state.status != Status::kLost && state.status != Status::kLeft) return;
  throw PeerLostError(
      peer, what,
      fmt::format("rank {} is {} and sent nothing more on channel {} step {}", peer,
                  state.status == Status::kLost ? "lost" : "left (said goodbye)", channel, step));
}

void ZmqPeerLink::enqueue(Outgoing frame, bool shaped) {
  bytes_sent_ += wire::kHeaderBytes + frame.payload.size();
  if (shaped && shaper_) {
    const size_t bytes = wire::kHeaderBytes + frame.payload.size();
    shaper_->post(bytes, [this, frame = std::move(frame)]() mutable {
      {
        std::lock_guard lock(outbox_mutex_);
        outbox_.push_back(std::move(frame));
      }
      wake_io();
    });
    return;
  }
  {
    std::lock_guard lock(outbox_mutex_);
    outbox_.push_back(std::move(frame));
  }
  wake_io();
}

void ZmqPeerLink::wake_io() {
  const uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable.
  [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof one);
}

void ZmqPeerLink::post(int peer, uint32_t channel, uint64_t step,
                       std::span<const std::byte> payload, const std::string& what,
                       Deadline /*deadline: the queue is unbounded, post never waits*/) {
  check_usable(peer, what);
  if (payload.size() > options_.max_message_bytes) {
    throw UsageError(fmt::format("{}: message of {} bytes to rank {} exceeds the limit of {}", what,
                                 payload.size(), peer, options_.max_message_bytes));
  }
  {
    std::lock_guard lock(mutex_);
    check_alive_locked(peer, what);
  }
  enqueue(Outgoing{peer, MessageType::kPeerData, step, after_u32(channel, payload)}, true);
}

std::vector<std::byte> ZmqPeerLink::receive(int peer, uint32_t channel, uint64_t step,
                                            const std::string& what, Deadline deadline) {
  check_usable(peer, what);
  const auto started = Clock::now();
  std::unique_lock lock(mutex_);
  for (;;) {
    if (crashed_) throw CommError(options_.rank, what, "this link was abandoned (crash_for_test)");
    if (auto message = take_locked(peer, channel, step)) return std::move(*message);
    check_drained_locked(peer, channel, step, what);
    if (deadline.expired()) {
      throw TimeoutError(
          peer, what, since(started),
          fmt::format("the message on channel {} step {} from rank {}", channel, step, peer));
    }
    changed_.wait_until(lock, wait_slice(deadline));
  }
}

std::optional<std::vector<std::byte>> ZmqPeerLink::try_receive(int peer, uint32_t channel,
                                                               uint64_t step) {
  const std::string what = fmt::format("try_receive channel {} step {}", channel, step);
  check_usable(peer, what);
  std::lock_guard lock(mutex_);
  if (auto message = take_locked(peer, channel, step)) return message;
  check_drained_locked(peer, channel, step, what);
  return std::nullopt;
}

std::vector<std::byte> ZmqPeerLink::call(int peer, uint32_t service,
                                         std::span<const std::byte> request,
                                         const std::string& what, Deadline deadline) {
  check_usable(peer, what);
  if (request.size() > options_.max_message_bytes) {
    throw UsageError(fmt::format("{}: request of {} bytes to rank {} exceeds the limit of {}", what,
                                 request.size(), peer, options_.max_message_bytes));
  }
  const auto started = Clock::now();
  uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    check_alive_locked(peer, what);
    id = next_call_id_++;
    calls_.emplace(id, PendingCall{peer, peers_[static_cast<size_t>(peer)].epoch, false, {}, {}});
  }
  enqueue(Outgoing{peer, MessageType::kPeerCall, id, after_u32(service, request)}, true);
  std::unique_lock lock(mutex_);
  for (;;) {
    auto pending = calls_.find(id);
    DTRAIN_CHECK(pending != calls_.end(), "call {} of rank {} vanished", id, options_.rank);
    if (pending->second.done) {
      PendingCall done = std::move(pending->second);
      calls_.erase(pending);
      if (done.error) {
        throw CommError(
            peer, what,
            fmt::format("rank {}'s handler for service {} failed: {}", peer, service, *done.error));
      }
      return std::move(done.reply);
    }
    const PeerState& state = peers_[static_cast<size_t>(peer)];
    if (state.epoch != pending->second.epoch || crashed_) {
      calls_.erase(pending);
      if (crashed_) {
        throw CommError(options_.rank, what, "this link was abandoned (crash_for_test)");
      }
      throw PeerLostError(peer, what,
                          fmt::format("rank {} is {} before it answered service {}", peer,
                                      state.status == Status::kLeft   ? "left"
                                      : state.status == Status::kLost ? "lost"
                                                                      : "replaced",
                                      service));
    }
    if (deadline.expired()) {
      calls_.erase(pending);
      throw TimeoutError(peer, what, since(started),
                         fmt::format("rank {}'s reply to service {}", peer, service));
    }
    changed_.wait_until(lock, wait_slice(deadline));
  }
}

void ZmqPeerLink::set_handler(Handler handler) {
  std::lock_guard lock(mutex_);
  handler_ = std::move(handler);
}

void ZmqPeerLink::set_listener(Listener listener) {
  std::lock_guard lock(mutex_);
  listener_ = std::move(listener);
}

bool ZmqPeerLink::alive(int peer) const {
  if (peer < 0 || peer >= options_.world_size) return false;
  std::lock_guard lock(mutex_);
  const Status status = peers_[static_cast<size_t>(peer)].status;
  return status == Status::kAlive || status == Status::kJoining;
}

uint64_t ZmqPeerLink::bytes_sent() const { return bytes_sent_.load(); }

uint64_t ZmqPeerLink::dropped_frames() const {
  return (router_ ? router_->dropped() : 0) + stale_drops_.load();
}

void ZmqPeerLink::leave() noexcept {
  std::vector<int> told;
  {
    std::lock_guard lock(mutex_);
    if (left_ || crashed_ || !connected_) {
      left_ = true;
      return;
    }
    left_ = true;
    for (int p = 0; p < options_.world_size; ++p) {
      const Status status = peers_[static_cast<size_t>(p)].status;
      if (p != options_.rank && (status == Status::kAlive || status == Status::kJoining)) {
        told.push_back(p);
      }
    }
    changed_.notify_all();
  }
  try {
    // Through the shaper, so that the goodbye follows the last data frame.
    for (const int p : told) enqueue(Outgoing{p, MessageType::kGoodbye, 0, {}}, true);
  } catch (const std::exception& e) {
    logger_.warn("peer link of rank {}: goodbye not sent: {}", options_.rank, e.what());
  }
}

void ZmqPeerLink::crash_for_test() {
  {
    std::lock_guard lock(mutex_);
    crashed_ = true;
    changed_.notify_all();
  }
  if (shaper_) shaper_->cancel();
  if (io_.joinable()) {
    io_.request_stop();
    wake_io();
    io_.join();
  }
  {
    std::lock_guard lock(outbox_mutex_);
    outbox_.clear();
  }
  for (size_t p = 0; p < dealers_.size(); ++p) {
    if (!dealers_[p]) continue;
    dealers_[p]->socket().set(zmq::sockopt::linger, 0);
    zmq_socket_monitor(dealers_[p]->socket().handle(), nullptr, 0);
  }
  monitors_.clear();
  dealers_.clear();
  router_.reset();
}

// ---- I/O thread -------------------------------------------------------------

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
  if (!crashed) flush_outbox();
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

void ZmqPeerLink::handle_frame(wire::Frame& frame, std::vector<Event>& events) {
  const int from = static_cast<int>(frame.header.sender);
  const uint64_t incarnation = frame.header.sequence;
  const MessageType type = frame.header.type;
  std::unique_lock lock(mutex_);
  PeerState& peer = peers_[static_cast<size_t>(from)];
  if (from == options_.rank) {
    ++stale_drops_;
    return;
  }
  if (incarnation != peer.incarnation) {
    const bool first = peer.incarnation == 0;
    if (!first && type != MessageType::kPeerHello) {
      ++stale_drops_;  // a late frame of a process since replaced
      return;
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
    return;
  }
  peer.status = Status::kAlive;
  peer.last_heard = Clock::now();
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
    case MessageType::kPeerReply: {
      auto pending = calls_.find(frame.header.tag);
      // The caller gave up, or called the process this one replaced.
      if (pending == calls_.end() || pending->second.peer != from ||
          pending->second.epoch != peer.epoch) {
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
        pending->second.error =
            std::string(reinterpret_cast<const char*>(body.data()), body.size());
      }
      changed_.notify_all();
      return;
    }
    case MessageType::kPeerCall:
      lock.unlock();
      answer_call(from, frame.header.tag, payload);
      return;
    default:
      return;
  }
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
    } else if (*id == ZMQ_EVENT_DISCONNECTED && !state.disconnected_since) {
      state.disconnected_since = Clock::now();
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
