#include "comm/transport/zmq_transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "comm/rendezvous/launch_env.h"
#include "comm/transport/tcp_lane.h"
#include "comm/transport/zmq_transport_peer.h"
#include "comm/wire/framed_socket.h"
#include "core/byte_codec.h"
#include "core/error.h"
#include "core/tsan_annotations.h"

namespace dtrain::comm {

namespace {

using Clock = Deadline::Clock;
using std::chrono::milliseconds;

// Longest single wait of a sender whose zero-copy buffer ZeroMQ still holds,
// between checks of its deadline and of peer failures.
constexpr milliseconds kReleaseCheck{50};
// Longest path of a Unix domain socket (sun_path) minus the terminator.
constexpr size_t kMaxIpcPath = 100;

std::string this_host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

milliseconds ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

// The caller's buffer handed to ZeroMQ without a copy; ZeroMQ calls
// release_buffer from its own thread once it no longer reads it.
struct BufferRelease {
  std::mutex mutex;
  std::condition_variable cv;
  bool released = false;
};

void release_buffer(void* /*data*/, void* hint) {
  auto* release = static_cast<BufferRelease*>(hint);
  // Notify under the lock: the waiting sender destroys `release` as soon as
  // it sees `released`, which it can only do after this unlock.
  std::lock_guard lock(release->mutex);
  release->released = true;
  release->cv.notify_all();
}

bool is_wildcard(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::";
}

}  // namespace

ZmqTransport::ZmqTransport(ZmqTransportOptions options, JobAuth auth, Logger& logger)
    : options_(std::move(options)),
      auth_(std::move(auth)),
      logger_(logger),
      drops_(logger, fmt::format("rank {}: dropped an inbound frame", options_.rank)),
      context_(1),
      inbound_(context_, zmq::socket_type::pull) {
  const auto& o = options_;
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    throw UsageError(
        fmt::format("zmq transport: rank {} is outside world size {}", o.rank, o.world_size));
  }
  if (o.heartbeat_interval.count() <= 0 || o.heartbeat_timeout <= o.heartbeat_interval) {
    throw UsageError(fmt::format(
        "zmq transport: heartbeat timeout {} ms must exceed the heartbeat interval {} ms (> 0)",
        o.heartbeat_timeout.count(), o.heartbeat_interval.count()));
  }
  inbound_.set(zmq::sockopt::rcvhwm, 0);
  inbound_.set(zmq::sockopt::linger, 0);
  inbound_.set(zmq::sockopt::maxmsgsize,
               static_cast<int64_t>(std::max<uint64_t>(o.max_message_bytes, wire::kHeaderBytes)));
  // security.encrypt: the PULL socket is the CURVE server of its tcp and ipc
  // endpoints, every PUSH a client (comm/wire/curve.h).
  if (auth_.curve() != nullptr) {
    zap_ = wire::secure_binding_socket(context_, inbound_, auth_, fmt::format("rank {}", o.rank),
                                       logger_);
  }
  const std::string tcp = fmt::format("tcp://{}:*", o.listen_host);
  try {
    inbound_.bind(tcp);
  } catch (const zmq::error_t& e) {
    throw CommError(o.rank, "bind", fmt::format("cannot listen on {}: {}", tcp, e.what()));
  }
  const std::string bound = inbound_.get(zmq::sockopt::last_endpoint);
  const int port = parse_host_port(bound.substr(bound.find("://") + 3), "bound endpoint").port;
  std::string advertise = o.advertise_host;
  if (advertise.empty()) advertise = is_wildcard(o.listen_host) ? this_host_name() : o.listen_host;
  if (advertise.find(':') != std::string::npos) advertise = "[" + advertise + "]";

  self_.rank = o.rank;
  self_.host = this_host_name();
  self_.tcp_endpoint = fmt::format("tcp://{}:{}", advertise, port);
  if (!o.ipc_dir.empty()) {
    // Unique among live transports of this process (address) and processes (pid).
    const std::string path =
        fmt::format("{}/dtrain-{:016x}-r{}-{}-{:x}.sock", o.ipc_dir, auth_.job_id(), o.rank,
                    static_cast<long>(getpid()), reinterpret_cast<uintptr_t>(this));
    if (path.size() <= kMaxIpcPath) {
      try {
        inbound_.bind("ipc://" + path);
        self_.ipc_endpoint = "ipc://" + path;
        ipc_path_ = path;
      } catch (const zmq::error_t& e) {
        logger_.warn("rank {}: no ipc endpoint at {} ({}); peers will use tcp", o.rank, path,
                     e.what());
      }
    }
  }

  const auto n = static_cast<size_t>(o.world_size);
  next_inbound_sequence_.assign(n, 0);
  peer_failure_.assign(n, std::nullopt);
  said_goodbye_.assign(n, false);
  lane_offer_.assign(n, std::nullopt);
  lane_marker_.assign(n, false);
  lane_offered_.assign(n, false);
  lane_reading_.assign(n, false);
  lane_closed_.assign(n, false);
  next_lane_sequence_.assign(n, 1);
  last_heard_.assign(n, Clock::now());
  disconnected_since_.assign(n, std::nullopt);
  if (o.link) shaper_ = std::make_unique<LinkShaper>(*o.link);
}

ZmqTransport::~ZmqTransport() {
  if (lane_setup_.joinable()) {
    lane_setup_.request_stop();
    lane_setup_.join();
  }
  if (shaper_) {
    // Frames still held by the shaper go before the goodbye (unless nobody
    // would take them); its thread stops here, before anything it uses.
    bool failed = false;
    {
      std::lock_guard lock(mutex_);
      failed = failure_.has_value();
    }
    if (failed) shaper_->cancel();
    shaper_.reset();
  }
  if (connected_) {
    // Goodbye goes after every data frame on each connection, so a peer that
    // reads it knows no more messages will come.
    std::optional<Failure> pass_on;
    bool failed = false;
    {
      std::lock_guard lock(mutex_);
      if (aborted_ && !abort_sent_) pass_on = failure_;
      failed = failure_.has_value();
    }
    // The lanes' queued frames leave first (unless nobody would take them).
    if (lanes_)
      lanes_->drain_and_finish(Deadline::after(failed ? milliseconds(0) : options_.linger));
    for (size_t p = 0; p < peers_.size(); ++p) {
      if (!peers_[p]) continue;
      bool alive = false;
      {
        std::lock_guard lock(mutex_);
        alive = !peer_failure_[p] && !said_goodbye_[p];
      }
      Peer& peer = *peers_[p];
      std::lock_guard send_lock(peer.send_mutex);
      if (peer.push_closed) continue;
      if (alive && pass_on) {
        try {
          send_abort_frame(peer, static_cast<int>(p), pass_on->peer, pass_on->problem);
        } catch (const zmq::error_t& e) {
          logger_.debug("rank {}: abort to rank {} not sent: {}", options_.rank, p, e.what());
        }
      } else if (alive) {
        try {
          if (!send_control_frame(peer, static_cast<int>(p), wire::MessageType::kGoodbye, {})) {
            logger_.debug("rank {}: goodbye to rank {} not queued", options_.rank, p);
          }
        } catch (const zmq::error_t& e) {
          logger_.debug("rank {}: goodbye to rank {} not sent: {}", options_.rank, p, e.what());
        }
      } else {
        // Nobody will read what is queued for a dead or departed peer.
        peer.push.set(zmq::sockopt::linger, 0);
      }
    }
  }
  io_thread_.request_stop();
  if (wake_fd_ >= 0) {
    // Wakes the I/O thread from its poll at once (else it sleeps up to a
    // heartbeat interval, which every re-formation and exit would wait).
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof one);
  }
  if (io_thread_.joinable()) io_thread_.join();
  lanes_.reset();
  if (wake_fd_ >= 0) close(wake_fd_);
  for (auto& peer : peers_) {
    if (!peer) continue;
    if (!peer->push_closed) zmq_socket_monitor(peer->push.handle(), nullptr, 0);
    peer->monitor.close();
    peer->push.close();
  }
  inbound_.close();
  // ZeroMQ removes only the socket files it named itself (ipc://*).
  if (!ipc_path_.empty()) unlink(ipc_path_.c_str());
  // context_'s destructor waits for queued frames up to each socket's linger.
}

void ZmqTransport::adopt_coordinator(std::unique_ptr<RendezvousServer> coordinator) {
  coordinator_ = std::move(coordinator);
}

void ZmqTransport::connect(const std::vector<PeerEndpoint>& table) {
  if (connected_) throw UsageError("zmq transport: connect() called twice");
  if (table.size() != static_cast<size_t>(options_.world_size)) {
    throw UsageError(fmt::format("zmq transport: endpoint table has {} entries, world size is {}",
                                 table.size(), options_.world_size));
  }
  if (table[options_.rank] != self_) {
    throw UsageError(
        fmt::format("zmq transport: table entry for rank {} is {}, not this "
                    "transport's endpoint {}",
                    options_.rank, table[options_.rank].tcp_endpoint, self_.tcp_endpoint));
  }
  peers_.resize(table.size());
  std::vector<bool> over_tcp(table.size(), false);
  for (size_t p = 0; p < table.size(); ++p) {
    if (static_cast<int>(p) == options_.rank) continue;
    const PeerEndpoint& e = table[p];
    if (e.rank != static_cast<int>(p)) {
      throw UsageError(fmt::format("zmq transport: table entry {} is for rank {}", p, e.rank));
    }
    auto peer = std::make_unique<Peer>();
    const bool use_ipc = options_.prefer_ipc && !e.ipc_endpoint.empty() &&
                         !self_.ipc_endpoint.empty() && e.host == self_.host;
    peer->endpoint = use_ipc ? e.ipc_endpoint : e.tcp_endpoint;
    over_tcp[p] = !use_ipc;
    peer->push = zmq::socket_t(context_, zmq::socket_type::push);
    peer->push.set(zmq::sockopt::sndhwm, 0);
    peer->push.set(zmq::sockopt::linger, static_cast<int>(options_.linger.count()));
    if (auth_.curve() != nullptr) wire::secure_connecting_socket(peer->push, auth_);
    const std::string monitor_address =
        fmt::format("inproc://dtrain-monitor-{:x}-{}", reinterpret_cast<uintptr_t>(this), p);
    if (zmq_socket_monitor(peer->push.handle(), monitor_address.c_str(),
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0) {
      throw CommError(static_cast<int>(p), "connect",
                      fmt::format("cannot monitor the socket: {}", zmq_strerror(zmq_errno())));
    }
    peer->monitor = zmq::socket_t(context_, zmq::socket_type::pair);
    peer->monitor.set(zmq::sockopt::linger, 0);
    peer->monitor.connect(monitor_address);
    try {
      peer->push.connect(peer->endpoint);
    } catch (const zmq::error_t& e) {
      throw CommError(static_cast<int>(p), "connect",
                      fmt::format("cannot connect to {}: {}", peer->endpoint, e.what()));
    }
    logger_.debug("rank {}: connecting to rank {} at {}", options_.rank, p, peer->endpoint);
    peers_[p] = std::move(peer);
  }
  {
    std::lock_guard lock(mutex_);
    std::fill(last_heard_.begin(), last_heard_.end(), Clock::now());
  }
  connected_ = true;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    throw CommError(-1, "zmq transport", fmt::format("eventfd: {}", std::strerror(errno)));
  }
  io_thread_ = std::jthread([this](std::stop_token stop) { run_io(std::move(stop)); });
  start_lanes(table, over_tcp);
}

// ---------------------------------------------------------------- calls

void ZmqTransport::check_peer_arg(int peer, const std::string& what) const {
  if (!connected_) throw UsageError(fmt::format("{}: zmq transport used before connect()", what));
  if (peer < 0 || peer >= options_.world_size || peer == options_.rank) {
    throw UsageError(fmt::format("{}: rank {} cannot address peer {} (world size {})", what,
                                 options_.rank, peer, options_.world_size));
  }
}

void ZmqTransport::fail_call(int peer, const std::string& what, const std::string& problem) {
  {
    std::lock_guard lock(mutex_);
    if (!failure_) failure_ = Failure{peer, problem};
  }
  notify_listener();
  cv_.notify_all();
  throw CommError(peer, what, problem);
}

void ZmqTransport::check_send(int peer, size_t bytes, const std::string& what) {
  check_peer_arg(peer, what);
  if (bytes > options_.max_message_bytes) {
    throw UsageError(fmt::format("{}: message of {} bytes to rank {} exceeds max_message_bytes {}",
                                 what, bytes, peer, options_.max_message_bytes));
  }
  std::optional<std::string> problem;
  {
    std::lock_guard lock(mutex_);
    if (failure_) throw CommError(failure_->peer, what, failure_->problem);
    if (peer_failure_[peer])
      problem = *peer_failure_[peer];
    else if (said_goodbye_[peer])
      problem = "the peer closed its transport";
  }
  if (problem) fail_call(peer, what, *problem);
}

void ZmqTransport::send(int peer, uint64_t tag, std::span<const std::byte> payload,
                        const std::string& what, Deadline deadline) {
  check_send(peer, payload.size(), what);
  Peer& link = *peers_[peer];
  if (!link.lane_sending.load(std::memory_order_acquire)) {
    std::lock_guard gate(link.lane_gate);
    if (!link.lane_sending.load(std::memory_order_acquire)) {
      if (shaper_) {
        send_shaped(peer, tag, payload);
      } else {
        send_frame(link, peer, wire::MessageType::kData, tag, payload, what, deadline);
      }
      return;
    }
  }
  send_lane(peer, tag, {}, payload, nullptr, what);
}

void ZmqTransport::send_owned(int peer, uint64_t tag, OwnedBuffer payload, const std::string& what,
                              Deadline deadline) {
  check_send(peer, payload.size, what);
  Peer& link = *peers_[peer];
  if (!link.lane_sending.load(std::memory_order_acquire)) {
    std::lock_guard gate(link.lane_gate);
    if (!link.lane_sending.load(std::memory_order_acquire)) {
      send_owned_zmq(link, peer, tag, std::move(payload), what, deadline);
      return;
    }
  }
  send_lane(peer, tag, {}, payload.bytes(), &payload, what);
}

void ZmqTransport::send_owned_zmq(Peer& link, int peer, uint64_t tag, OwnedBuffer payload,
                                  const std::string& what, Deadline deadline) {
  if (shaper_) {
    send_shaped(peer, tag, payload.bytes());
    return;
  }
  if (payload.size < options_.zero_copy_min_bytes) {
    // A copy costs as little as the hand-over here.
    send_frame(link, peer, wire::MessageType::kData, tag, payload.bytes(), what, deadline);
    return;
  }
  // ZeroMQ releases the buffer from its I/O thread once the bytes have left;
  // the hint carries its capacity.
  const size_t capacity = payload.capacity();
  // The buffer comes back on ZeroMQ's I/O thread, through pipes TSan does
  // not see, and goes on to another sender through the pool (queue_frame
  // marks the hand-over, after the MAC has read the buffer).
  zmq::message_t body(
      payload.data.release(), payload.size,
      [](void* data, void* hint) {
        tsan_acquire(data);
        release_owned_buffer(static_cast<std::byte*>(data), reinterpret_cast<uintptr_t>(hint));
      },
      reinterpret_cast<void*>(static_cast<uintptr_t>(capacity)));
  const std::optional<std::string> problem =
      queue_frame(link, peer, wire::MessageType::kData, tag, bytes_of(body), body);
  if (problem) fail_call(peer, what, *problem);
}

void ZmqTransport::send_shaped(int peer_rank, uint64_t tag, std::span<const std::byte> payload) {
  // A copy: the caller's buffer is free once send() returns, long before
  // the frame leaves.
  auto body = std::make_shared<zmq::message_t>(payload.data(), payload.size());
  shaper_->post(wire::kHeaderBytes + payload.size(), [this, peer_rank, tag, body] {
    const std::optional<std::string> problem = queue_frame(
        *peers_[peer_rank], peer_rank, wire::MessageType::kData, tag, bytes_of(*body), *body);
    if (problem) {
      // send() has returned: the failure surfaces from a later call.
      fail_peer(peer_rank, *problem);
      fail_transport(peer_rank, *problem);
    }
  });
}

std::optional<std::string> ZmqTransport::queue_frame(Peer& peer, int peer_rank,
                                                     wire::MessageType type, uint64_t tag,
                                                     std::span<const std::byte> payload,
                                                     zmq::message_t& body) {
  std::lock_guard send_lock(peer.send_mutex);
  if (peer.push_closed) return std::string("the connection was closed after a failure");
  const wire::HeaderBytes header =
      frame_header(peer_rank, type, peer.next_sequence++, tag, payload);
  // The hand-over of `body` to ZeroMQ's I/O thread (core/tsan_annotations.h):
  // after the MAC above read it.
  tsan_release(body.data());
  try {
    if (peer.push
            .send(zmq::const_buffer(header.data(), header.size()),
                  zmq::send_flags::sndmore | zmq::send_flags::dontwait)
            .has_value() &&
        peer.push.send(body, zmq::send_flags::dontwait).has_value()) {
      return std::nullopt;
    }
  } catch (const zmq::error_t& e) {
    return fmt::format("ZeroMQ send failed: {}", e.what());
  }
  return std::string("ZeroMQ send queue refused the message");
}

void ZmqTransport::send_frame(Peer& peer, int peer_rank, wire::MessageType type, uint64_t tag,
                              std::span<const std::byte> payload, const std::string& what,
                              Deadline deadline) {
  std::optional<std::string> problem;
  const bool zero_copy = payload.size() >= options_.zero_copy_min_bytes;
  BufferRelease release;
  {
    // zmq_msg_init_data takes a non-const pointer but only reads the buffer.
    zmq::message_t body = zero_copy ? zmq::message_t(const_cast<std::byte*>(payload.data()),
                                                     payload.size(), &release_buffer, &release)
                                    : zmq::message_t(payload.data(), payload.size());
    problem = queue_frame(peer, peer_rank, type, tag, payload, body);
    // On failure `body` still owns the buffer and releases it right here.
  }
  if (problem) fail_call(peer_rank, what, *problem);
  if (!zero_copy) return;

  // ZeroMQ reads the caller's buffer until it calls release_buffer.
  const auto start = Clock::now();
  std::unique_lock release_lock(release.mutex);
  while (!release.released) {
    release.cv.wait_for(release_lock, std::min(kReleaseCheck, deadline.remaining()));
    if (release.released) break;
    std::optional<std::string> reason;
    bool timed_out = false;
    {
      std::lock_guard lock(mutex_);
      if (failure_)
        reason = failure_->problem;
      else if (peer_failure_[peer_rank])
        reason = *peer_failure_[peer_rank];
    }
    if (!reason && deadline.expired()) timed_out = true;
    if (!reason && !timed_out) continue;
    // Give up on this peer: closing the socket without linger makes ZeroMQ
    // drop the queued frame and release the buffer.
    release_lock.unlock();
    {
      std::lock_guard send_lock(peer.send_mutex);
      if (!peer.push_closed) {
        peer.push.set(zmq::sockopt::linger, 0);
        peer.push.close();
        peer.push_closed = true;
      }
    }
    release_lock.lock();
    release.cv.wait(release_lock, [&] { return release.released; });
    release_lock.unlock();
    if (timed_out) {
      TimeoutError error(peer_rank, what, ms_since(start),
                         fmt::format("rank {} to take a {}-byte message on tag {}", peer_rank,
                                     payload.size(), tag));
      {
        std::lock_guard lock(mutex_);
        if (!failure_) failure_ = Failure{peer_rank, error.what()};
      }
      notify_listener();
      cv_.notify_all();
      throw error;
    }
    fail_call(peer_rank, what, *reason);
  }
}

std::vector<std::byte> ZmqTransport::recv(int peer, uint64_t tag, const std::string& what,
                                          Deadline deadline) {
  zmq::message_t message = take(peer, tag, what, deadline);
  const auto bytes = bytes_of(message);
  return std::vector<std::byte>(bytes.begin(), bytes.end());
}

void ZmqTransport::recv_visit(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                              const MessageVisitor& use) {
  const zmq::message_t message = take(peer, tag, what, deadline);
  use(bytes_of(message));
}

bool ZmqTransport::send_abort_frame(Peer& peer, int peer_rank, int culprit,
                                    const std::string& reason) {
  if (peer.push_closed) return false;
  ByteWriter w(sizeof(int32_t) + reason.size());
  w.write_i32(static_cast<int32_t>(culprit));
  w.write_bytes(std::as_bytes(std::span(reason.data(), reason.size())));
  return send_control_frame(peer, peer_rank, wire::MessageType::kAbort, w.take());
}

wire::HeaderBytes ZmqTransport::frame_header(int peer, wire::MessageType type, uint64_t sequence,
                                             uint64_t tag, std::span<const std::byte> head,
                                             std::span<const std::byte> body) const {
  wire::FrameHeader h;
  h.type = type;
  h.sender = static_cast<uint32_t>(options_.rank);
  h.receiver = static_cast<uint32_t>(peer);
  h.job_id = auth_.job_id();
  h.sequence = sequence;
  h.tag = tag;
  return wire::encode_header(h, head, body, auth_, with_crc());
}

bool ZmqTransport::send_control_frame(Peer& peer, int peer_rank, wire::MessageType type,
                                      std::span<const std::byte> payload, uint64_t tag) {
  const wire::HeaderBytes header = frame_header(peer_rank, type, peer.next_sequence, tag, payload);
  if (peer.push.send(zmq::const_buffer(header.data(), header.size()),
                     zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
      peer.push.send(zmq::const_buffer(payload.data(), payload.size()),
                     zmq::send_flags::dontwait)) {
    ++peer.next_sequence;
    return true;
  }
  return false;
}

void ZmqTransport::abort(int culprit, const std::string& reason) noexcept {
  try {
    std::vector<bool> reachable(peers_.size(), false);
    {
      std::lock_guard lock(mutex_);
      if (aborted_) return;
      aborted_ = true;
      abort_sent_ = true;
      if (!failure_) failure_ = Failure{culprit, reason};
      for (size_t p = 0; p < peers_.size(); ++p) {
        reachable[p] = peers_[p] != nullptr && !peer_failure_[p] && !said_goodbye_[p];
      }
    }
    notify_listener();
    cv_.notify_all();
    if (!connected_) return;
    for (size_t p = 0; p < peers_.size(); ++p) {
      if (!reachable[p]) continue;
      Peer& peer = *peers_[p];
      std::lock_guard send_lock(peer.send_mutex);
      send_abort_frame(peer, static_cast<int>(p), culprit, reason);
    }
  } catch (const std::exception& e) {
    // Best effort: a peer not told fails by its own detection or deadline.
    logger_.debug("rank {}: abort notice not sent: {}", options_.rank, e.what());
  }
}

// ---------------------------------------------------------------- start-up

std::unique_ptr<ZmqTransport> connect_zmq_transport(const ZmqTransportOptions& options,
                                                    const JobAuth& auth,
                                                    const std::string& coordinator,
                                                    bool host_coordinator, Deadline deadline,
                                                    Logger& logger) {
  std::unique_ptr<RendezvousServer> server;
  if (host_coordinator) {
    const HostPort hp = parse_host_port(coordinator, "coordinator");
    const std::string bind_host = hp.host == "localhost" ? "127.0.0.1" : hp.host;
    server =
        std::make_unique<RendezvousServer>(is_wildcard(options.listen_host) ? "0.0.0.0" : bind_host,
                                           hp.port, options.world_size, auth, logger);
  }
  auto transport = std::make_unique<ZmqTransport>(options, auth, logger);
  auto table = rendezvous(coordinator, transport->local_endpoint(), options.world_size, auth,
                          deadline, logger);
  transport->connect(table);
  if (server) transport->adopt_coordinator(std::move(server));
  return transport;
}

}  // namespace dtrain::comm
