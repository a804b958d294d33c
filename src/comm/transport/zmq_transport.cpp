#include "comm/transport/zmq_transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "comm/rendezvous/launch_env.h"
#include "comm/wire/framed_socket.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = Deadline::Clock;
using std::chrono::milliseconds;

// Frames read per poll wake-up before the I/O thread looks at its timers.
constexpr int kMaxFramesPerWake = 1024;
// Longest single wait of a sender whose zero-copy buffer ZeroMQ still holds,
// between checks of its deadline and of peer failures.
constexpr milliseconds kReleaseCheck{50};
// Longest path of a Unix domain socket (sun_path) minus the terminator.
constexpr size_t kMaxIpcPath = 100;

std::span<const std::byte> bytes_of(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

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

struct ZmqTransport::Peer {
  std::mutex send_mutex;
  zmq::socket_t push;           // guarded by send_mutex
  bool push_closed = false;     // guarded by send_mutex
  uint64_t next_sequence = 0;   // guarded by send_mutex
  zmq::socket_t monitor;        // I/O thread only (and the destructor after it)
  bool ever_connected = false;  // I/O thread only
  std::string endpoint;
};

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
  last_heard_.assign(n, Clock::now());
  disconnected_since_.assign(n, std::nullopt);
  if (o.link) shaper_ = std::make_unique<LinkShaper>(*o.link);
}

ZmqTransport::~ZmqTransport() {
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
    {
      std::lock_guard lock(mutex_);
      if (aborted_ && !abort_sent_) pass_on = failure_;
    }
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
          const auto header = wire::encode_header({wire::MessageType::kGoodbye,
                                                   0,
                                                   static_cast<uint32_t>(options_.rank),
                                                   static_cast<uint32_t>(p),
                                                   auth_.job_id(),
                                                   peer.next_sequence++,
                                                   0,
                                                   0,
                                                   0,
                                                   {}},
                                                  {}, auth_, options_.checksum);
          peer.push.send(zmq::const_buffer(header.data(), header.size()), zmq::send_flags::sndmore);
          peer.push.send(zmq::const_buffer(), zmq::send_flags::dontwait);
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

void ZmqTransport::send(int peer, uint64_t tag, std::span<const std::byte> payload,
                        const std::string& what, Deadline deadline) {
  check_peer_arg(peer, what);
  if (payload.size() > options_.max_message_bytes) {
    throw UsageError(fmt::format("{}: message of {} bytes to rank {} exceeds max_message_bytes {}",
                                 what, payload.size(), peer, options_.max_message_bytes));
  }
  {
    std::lock_guard lock(mutex_);
    if (failure_) throw CommError(failure_->peer, what, failure_->problem);
  }
  if (shaper_) {
    std::optional<std::string> problem;
    {
      std::lock_guard lock(mutex_);
      if (peer_failure_[peer])
        problem = *peer_failure_[peer];
      else if (said_goodbye_[peer])
        problem = "the peer closed its transport";
    }
    if (problem) fail_call(peer, what, *problem);
    send_shaped(peer, tag, payload);
    return;
  }
  send_frame(*peers_[peer], peer, wire::MessageType::kData, tag, payload, what, deadline);
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
  wire::FrameHeader h;
  h.type = type;
  h.sender = static_cast<uint32_t>(options_.rank);
  h.receiver = static_cast<uint32_t>(peer_rank);
  h.job_id = auth_.job_id();
  h.sequence = peer.next_sequence++;
  h.tag = tag;
  const wire::HeaderBytes header = wire::encode_header(h, payload, auth_, options_.checksum);
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
  {
    std::lock_guard lock(mutex_);
    if (peer_failure_[peer_rank])
      problem = *peer_failure_[peer_rank];
    else if (said_goodbye_[peer_rank])
      problem = "the peer closed its transport";
  }
  if (problem) fail_call(peer_rank, what, *problem);

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

zmq::message_t ZmqTransport::take(int peer, uint64_t tag, const std::string& what,
                                  Deadline deadline) {
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
    else if (said_goodbye_[peer]) {
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
    if (deadline.is_never()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, deadline.at());
    }
  }
}

std::vector<std::byte> ZmqTransport::recv(int peer, uint64_t tag, const std::string& what,
                                          Deadline deadline) {
  zmq::message_t message = take(peer, tag, what, deadline);
  const auto bytes = bytes_of(message);
  return std::vector<std::byte>(bytes.begin(), bytes.end());
}

void ZmqTransport::recv_into(int peer, uint64_t tag, std::span<std::byte> out,
                             const std::string& what, Deadline deadline) {
  zmq::message_t message = take(peer, tag, what, deadline);
  if (message.size() != out.size()) {
    fail_call(peer, what,
              fmt::format("message on tag {} is {} bytes, the receive buffer is {} bytes", tag,
                          message.size(), out.size()));
  }
  if (!out.empty()) std::memcpy(out.data(), message.data(), out.size());
}

bool ZmqTransport::send_abort_frame(Peer& peer, int peer_rank, int culprit,
                                    const std::string& reason) {
  if (peer.push_closed) return false;
  ByteWriter w(sizeof(int32_t) + reason.size());
  w.write_i32(static_cast<int32_t>(culprit));
  w.write_bytes(std::as_bytes(std::span(reason.data(), reason.size())));
  const std::vector<std::byte> payload = w.take();
  wire::FrameHeader h;
  h.type = wire::MessageType::kAbort;
  h.sender = static_cast<uint32_t>(options_.rank);
  h.receiver = static_cast<uint32_t>(peer_rank);
  h.job_id = auth_.job_id();
  h.sequence = peer.next_sequence;
  const auto header = wire::encode_header(h, payload, auth_, options_.checksum);
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
    if (h.type == wire::MessageType::kData) {
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
    wire::FrameHeader h;
    h.type = wire::MessageType::kHeartbeat;
    h.sender = static_cast<uint32_t>(options_.rank);
    h.receiver = static_cast<uint32_t>(p);
    h.job_id = auth_.job_id();
    h.sequence = peer.next_sequence;
    const auto header = wire::encode_header(h, {}, auth_, options_.checksum);
    if (peer.push.send(zmq::const_buffer(header.data(), header.size()),
                       zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
        peer.push.send(zmq::const_buffer(), zmq::send_flags::dontwait)) {
      ++peer.next_sequence;
    }
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
