#include "comm/peer/zmq_peer_link.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <random>

#include "comm/peer/zmq_peer_link_frames.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = std::chrono::steady_clock;
using peer_frames::kChannelBytes;
using wire::MessageType;

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
  try {
    if (options_.link) shaper_ = std::make_unique<LinkShaper>(*options_.link);
    if (!options_.peer_endpoints.empty()) connect(options_.peer_endpoints);
  } catch (...) {
    ::close(wake_fd_);  // no destructor runs for a constructor that throws
    throw;
  }
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
  // The process this receive waits on: if it is lost, leaves or is replaced
  // meanwhile (even lost and replaced between two wake-ups), it throws.
  const uint64_t epoch = peers_[static_cast<size_t>(peer)].epoch;
  for (;;) {
    if (crashed_) throw CommError(options_.rank, what, "this link was abandoned (crash_for_test)");
    if (auto message = take_locked(peer, channel, step)) return std::move(*message);
    check_drained_locked(peer, channel, step, what);
    if (peers_[static_cast<size_t>(peer)].epoch != epoch) {
      throw PeerLostError(peer, what,
                          fmt::format("rank {} was replaced by a new process while this waited "
                                      "for channel {} step {}",
                                      peer, channel, step));
    }
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

}  // namespace dtrain::comm
