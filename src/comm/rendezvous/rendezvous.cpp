#include "comm/rendezvous/rendezvous.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <zmq.hpp>

#include "comm/rendezvous/coordinator_socket.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxStringBytes = 1024;
constexpr uint64_t kMaxRendezvousPayload = 1 << 20;
constexpr auto kPollSlice = 100ms;
constexpr const char* kSecretHint =
    "set DTRAIN_JOB_SECRET so that only the job's processes can register";

void write_endpoint(ByteWriter& w, const PeerEndpoint& e) {
  w.write_u32(static_cast<uint32_t>(e.rank));
  for (const std::string* s : {&e.host, &e.tcp_endpoint, &e.ipc_endpoint}) {
    DTRAIN_CHECK(s->size() <= kMaxStringBytes, "endpoint string of {} bytes", s->size());
    w.write_string(*s);
  }
}

PeerEndpoint read_endpoint(ByteReader& r) {
  PeerEndpoint e;
  e.rank = static_cast<int>(r.read_u32("rank"));
  e.host = r.read_string("host", kMaxStringBytes);
  e.tcp_endpoint = r.read_string("tcp endpoint", kMaxStringBytes);
  e.ipc_endpoint = r.read_string("ipc endpoint", kMaxStringBytes);
  return e;
}

// kRegister's payload.
struct Registration {
  uint32_t world_size = 0;
  PeerEndpoint endpoint;
};

std::vector<std::byte> encode_registration(uint32_t world_size, const PeerEndpoint& self) {
  ByteWriter w;
  w.write_u32(world_size);
  write_endpoint(w, self);
  return w.take();
}

Registration decode_registration(std::span<const std::byte> payload) {
  ByteReader r(payload, "rendezvous registration");
  Registration reg;
  reg.world_size = r.read_u32("world size");
  reg.endpoint = read_endpoint(r);
  r.expect_end("registration");
  return reg;
}

// kStatus's payload: u32 world size, then a bitmap of the registered ranks.
std::vector<std::byte> encode_status(const std::vector<bool>& registered) {
  ByteWriter w;
  w.write_u32(static_cast<uint32_t>(registered.size()));
  std::vector<std::byte> bitmap((registered.size() + 7) / 8);
  for (size_t r = 0; r < registered.size(); ++r) {
    if (registered[r]) bitmap[r / 8] |= static_cast<std::byte>(1 << (r % 8));
  }
  w.write_bytes(bitmap);
  return w.take();
}

std::vector<int> decode_status(std::span<const std::byte> payload, int world_size,
                               const std::string& coordinator) {
  ByteReader r(payload, "rendezvous status");
  if (r.remaining() != 4 + static_cast<size_t>((world_size + 7) / 8) ||
      r.read_u32("world size") != static_cast<uint32_t>(world_size)) {
    throw DataError(fmt::format("rendezvous status from {}: malformed for world size {}",
                                coordinator, world_size));
  }
  const auto bitmap = r.read_bytes(static_cast<size_t>((world_size + 7) / 8), "bitmap");
  std::vector<int> registered;
  for (int rank = 0; rank < world_size; ++rank) {
    if ((std::to_integer<int>(bitmap[rank / 8]) >> (rank % 8)) & 1) registered.push_back(rank);
  }
  return registered;
}

std::string printable(std::span<const std::byte> bytes) {
  std::string s;
  for (std::byte b : bytes.first(std::min<size_t>(bytes.size(), 500))) {
    const char c = static_cast<char>(b);
    s.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return s;
}

std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.empty()) return "none";
  return fmt::format("{}", fmt::join(ranks, ", "));
}

std::string describe(const PeerEndpoint& e) {
  return fmt::format("host '{}', endpoint {}", e.host, e.tcp_endpoint);
}

}  // namespace

std::vector<std::byte> encode_endpoints(std::span<const PeerEndpoint> endpoints) {
  ByteWriter w;
  w.write_u32(static_cast<uint32_t>(endpoints.size()));
  for (const PeerEndpoint& e : endpoints) write_endpoint(w, e);
  return w.take();
}

std::vector<PeerEndpoint> decode_endpoints(std::span<const std::byte> bytes, size_t max_count) {
  ByteReader r(bytes, "rendezvous record");
  const uint32_t count = r.read_u32("endpoint count");
  if (count > max_count) {
    throw DataError(
        fmt::format("rendezvous table: {} endpoints, more than the {} expected", count, max_count));
  }
  std::vector<PeerEndpoint> out;
  out.reserve(count);
  for (uint32_t i = 0; i < count; ++i) out.push_back(read_endpoint(r));
  r.expect_end("table");
  return out;
}

// ---------------------------------------------------------------- server

// The coordinator's state and its handlers; everything but the observers'
// part (under `mutex`) belongs to the serving thread.
struct RendezvousServer::State {
  State(int world_size, Logger& logger, std::atomic<bool>& complete)
      : world_size(world_size),
        logger(logger),
        complete(complete),
        refusals(logger, "rendezvous coordinator: refused a registration"),
        holders(static_cast<size_t>(world_size)) {}

  // Serving thread: one handler per message kind (kRegister is the only one
  // a rank sends), and the replies.
  void on_register(const wire::Frame& frame);
  void on_dropped(const wire::RejectedFrame& frame);
  void reply(std::string_view identity, wire::MessageType type, uint32_t receiver,
             std::span<const std::byte> payload);
  void refuse(std::string_view identity, uint32_t receiver, const std::string& reason);
  void void_rendezvous(int rank, std::string_view identity, const PeerEndpoint& challenger);
  void accept(int rank, std::string_view identity, const PeerEndpoint& endpoint);
  void send_to_all(wire::MessageType type, std::span<const std::byte> payload);

  const int world_size;
  Logger& logger;
  std::atomic<bool>& complete;
  wire::RateLimitedLog refusals;
  zmq::context_t context{1};
  std::unique_ptr<wire::FramedSocket> socket;
  // By rank: the connection (ZeroMQ routing id) that registered it, and its endpoint.
  struct Holder {
    std::string identity;
    PeerEndpoint endpoint;
  };
  std::vector<std::optional<Holder>> holders;
  uint64_t sequence = 0;

  // Shared with observers on other threads.
  mutable std::mutex mutex;
  mutable std::condition_variable cv;
  std::vector<int> registered;
  std::optional<std::string> conflict;  // set once: the rendezvous is void
};

void RendezvousServer::State::reply(std::string_view identity, wire::MessageType type,
                                    uint32_t receiver, std::span<const std::byte> payload) {
  wire::FrameHeader h;
  h.type = type;
  h.receiver = receiver;
  h.sequence = sequence++;
  socket->send(identity, h, payload);
}

void RendezvousServer::State::refuse(std::string_view identity, uint32_t receiver,
                                     const std::string& reason) {
  refusals.add(reason);
  reply(identity, wire::MessageType::kReject, receiver,
        std::as_bytes(std::span(reason.data(), reason.size())));
}

// A frame the socket dropped (another job, failing authentication, not a
// registration, malformed): answered, so that a misconfigured rank learns why
// at once, but it never touches the state.
void RendezvousServer::State::on_dropped(const wire::RejectedFrame& frame) {
  reply(frame.identity, wire::MessageType::kReject, wire::kAnyReceiver,
        std::as_bytes(std::span(frame.reason.data(), frame.reason.size())));
}

void RendezvousServer::State::send_to_all(wire::MessageType type,
                                          std::span<const std::byte> payload) {
  for (int r = 0; r < world_size; ++r) {
    if (holders[r]) reply(holders[r]->identity, type, static_cast<uint32_t>(r), payload);
  }
}

void RendezvousServer::State::on_register(const wire::Frame& frame) {
  const uint32_t sender = frame.header.sender;
  const int rank = static_cast<int>(sender);
  Registration reg;
  try {
    reg = decode_registration(frame.payload());
  } catch (const DataError& e) {
    refuse(frame.identity, sender, e.what());
    return;
  }
  if (reg.world_size != static_cast<uint32_t>(world_size)) {
    refuse(frame.identity, sender,
           fmt::format("rank {} registered with world size {}, the coordinator expects {}", rank,
                       reg.world_size, world_size));
    return;
  }
  if (reg.endpoint.rank != rank) {
    refuse(frame.identity, sender,
           fmt::format("frame from rank {} registers an endpoint for rank {}", rank,
                       reg.endpoint.rank));
    return;
  }
  const std::optional<Holder>& holder = holders[rank];
  const bool same_connection = holder && holder->identity == frame.identity;
  if (complete.load()) {
    if (same_connection) {
      // It missed the table: the same connection registering again.
      std::vector<PeerEndpoint> table;
      for (const auto& h : holders) table.push_back(h->endpoint);
      reply(frame.identity, wire::MessageType::kTable, sender, encode_endpoints(table));
    } else {
      refuse(frame.identity, sender,
             fmt::format("rank {} is already registered by another process: {} (the table went "
                         "out to every rank); two processes were started with rank {}, or an "
                         "outsider registered as rank {} ({})",
                         rank, describe(holder->endpoint), rank, rank, kSecretHint));
    }
    return;
  }
  std::optional<std::string> void_reason;
  {
    std::lock_guard lock(mutex);
    void_reason = conflict;
  }
  if (void_reason) {
    refuse(frame.identity, sender, *void_reason);
    return;
  }
  if (holder && !same_connection) {
    void_rendezvous(rank, frame.identity, reg.endpoint);
    return;
  }
  accept(rank, frame.identity, reg.endpoint);
}

void RendezvousServer::State::void_rendezvous(int rank, std::string_view identity,
                                              const PeerEndpoint& challenger) {
  const PeerEndpoint first = holders[rank]->endpoint;
  refuse(identity, static_cast<uint32_t>(rank),
         fmt::format("rank {} is already registered by another process: {} (registered first; "
                     "this registration: {}); two processes were started with rank {}, or an "
                     "outsider registered as rank {} ({}); the coordinator cannot tell which is "
                     "rightful, so the rendezvous is void and no rank gets the table",
                     rank, describe(first), describe(challenger), rank, rank, kSecretHint));
  const std::string reason = fmt::format(
      "the rendezvous is void: rank {} was registered by two processes ({} first, then {}); two "
      "processes were started with rank {}, or an outsider registered as rank {} ({}); no rank "
      "gets the table",
      rank, describe(first), describe(challenger), rank, rank, kSecretHint);
  {
    std::lock_guard lock(mutex);
    conflict = reason;
  }
  logger.warn("rendezvous coordinator: {}", reason);
  for (int r = 0; r < world_size; ++r) {
    if (holders[r]) refuse(holders[r]->identity, static_cast<uint32_t>(r), reason);
  }
}

void RendezvousServer::State::accept(int rank, std::string_view identity,
                                     const PeerEndpoint& endpoint) {
  const bool fresh = !holders[rank];
  holders[rank] = Holder{std::string(identity), endpoint};
  if (fresh) {
    logger.debug("rendezvous coordinator: rank {} registered {}", rank, endpoint.tcp_endpoint);
    {
      std::lock_guard lock(mutex);
      registered.insert(std::lower_bound(registered.begin(), registered.end(), rank), rank);
    }
    cv.notify_all();
  }
  std::vector<bool> present(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) present[r] = holders[r].has_value();
  if (std::find(present.begin(), present.end(), false) == present.end()) {
    std::vector<PeerEndpoint> table;
    for (const auto& h : holders) table.push_back(h->endpoint);
    // Before the table leaves: a rank holding it finds complete() true.
    complete.store(true);
    send_to_all(wire::MessageType::kTable, encode_endpoints(table));
  } else {
    send_to_all(wire::MessageType::kStatus, encode_status(present));
  }
}

std::vector<int> RendezvousServer::registered() const {
  std::lock_guard lock(state_->mutex);
  return state_->registered;
}

std::optional<std::string> RendezvousServer::conflict() const {
  std::lock_guard lock(state_->mutex);
  return state_->conflict;
}

uint64_t RendezvousServer::dropped_frames() const { return state_->socket->dropped(); }

bool RendezvousServer::wait_until_registered(size_t count, Deadline deadline) const {
  std::unique_lock lock(state_->mutex);
  return state_->cv.wait_until(lock, deadline.at(),
                               [&] { return state_->registered.size() >= count; });
}

RendezvousServer::RendezvousServer(const std::string& bind_host, int port, int world_size,
                                   JobAuth auth, Logger& logger)
    : bind_host_(bind_host), auth_(std::move(auth)), logger_(logger) {
  if (world_size < 1) throw UsageError(fmt::format("rendezvous: world size {} < 1", world_size));
  state_ = std::make_unique<State>(world_size, logger_, complete_);
  CoordinatorSocket bound = bind_coordinator_socket(
      state_->context, "rendezvous coordinator", bind_host, port, static_cast<uint32_t>(world_size),
      kMaxRendezvousPayload,
      [state = state_.get()](const wire::RejectedFrame& f) { state->on_dropped(f); }, auth_,
      logger_);
  state_->socket = std::move(bound.socket);
  port_ = bound.port;
  thread_ = std::jthread([this](std::stop_token stop) { serve(std::move(stop)); });
}

RendezvousServer::~RendezvousServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

std::string RendezvousServer::address() const { return coordinator_address(bind_host_, port_); }

void RendezvousServer::serve(std::stop_token stop) {
  while (!stop.stop_requested()) {
    if (auto frame = state_->socket->receive(Deadline::after(kPollSlice))) {
      state_->on_register(*frame);
    }
  }
}

// ---------------------------------------------------------------- client

namespace {

// The table of a kTable reply, checked against the world size.
std::vector<PeerEndpoint> read_table(std::span<const std::byte> payload, int world_size,
                                     const std::string& coordinator) {
  auto table = decode_endpoints(payload, static_cast<size_t>(world_size));
  if (table.size() != static_cast<size_t>(world_size)) {
    throw DataError(fmt::format("rendezvous table from {} has {} endpoints, world size is {}",
                                coordinator, table.size(), world_size));
  }
  for (int rank = 0; rank < world_size; ++rank) {
    if (table[rank].rank != rank) {
      throw DataError(fmt::format("rendezvous table from {}: entry {} is for rank {}", coordinator,
                                  rank, table[rank].rank));
    }
  }
  return table;
}

[[noreturn]] void throw_timeout(const std::string& coordinator, int world_size,
                                const std::optional<std::vector<int>>& registered,
                                std::chrono::milliseconds waited, wire::FramedSocket& socket) {
  if (!registered) {
    const std::string handshake = socket.handshake_failures();
    throw TimeoutError(-1, "rendezvous", waited,
                       fmt::format("a reply from the coordinator at {} ({})", coordinator,
                                   handshake.empty() ? "is it running and reachable?" : handshake));
  }
  std::vector<int> missing;
  for (int r = 0; r < world_size; ++r) {
    if (std::find(registered->begin(), registered->end(), r) == registered->end()) {
      missing.push_back(r);
    }
  }
  throw TimeoutError(-1, "rendezvous", waited,
                     fmt::format("ranks {} to register at the coordinator {} (registered: {})",
                                 rank_list(missing), coordinator, rank_list(*registered)));
}

}  // namespace

std::vector<PeerEndpoint> rendezvous(const std::string& coordinator, const PeerEndpoint& self,
                                     int world_size, const JobAuth& auth, Deadline deadline,
                                     Logger& logger) {
  const auto start = Deadline::Clock::now();
  const HostPort hp = parse_host_port(coordinator, "coordinator");
  if (world_size < 1 || self.rank < 0 || self.rank >= world_size) {
    throw UsageError(
        fmt::format("rendezvous: rank {} is outside world size {}", self.rank, world_size));
  }
  wire::FramedSocketOptions o;
  o.name = fmt::format("rendezvous rank {}", self.rank);
  o.rank = static_cast<uint32_t>(self.rank);
  o.limits = wire::FrameLimits{auth.job_id(), static_cast<uint32_t>(world_size),
                               static_cast<uint32_t>(self.rank), kMaxRendezvousPayload};
  o.accepted = {wire::MessageType::kTable, wire::MessageType::kReject, wire::MessageType::kStatus};
  o.on_reject = [&](const wire::RejectedFrame& f) {
    // A refusal from a coordinator of another job or with another secret
    // cannot be verified; its reason is still the most useful thing to show.
    if (f.raw_type() == static_cast<uint8_t>(wire::MessageType::kReject)) {
      throw CommError(-1, "rendezvous",
                      fmt::format("the coordinator at {} refused rank {}: \"{}\" (its reply "
                                  "failed verification too: {})",
                                  coordinator, self.rank, printable(f.payload), f.reason));
    }
  };
  zmq::context_t context(1);
  const std::string host = hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host;
  wire::FramedSocket socket(context, wire::FramedSocket::Role::kDealer,
                            fmt::format("tcp://{}:{}", host, hp.port), std::move(o), auth, logger);
  wire::FrameHeader h;
  h.type = wire::MessageType::kRegister;
  h.receiver = wire::kCoordinator;
  socket.send({}, h, encode_registration(static_cast<uint32_t>(world_size), self));

  std::optional<std::vector<int>> registered;  // from the last status frame
  while (true) {
    std::optional<wire::Frame> reply = socket.receive(deadline);
    if (!reply) {
      throw_timeout(
          coordinator, world_size, registered,
          std::chrono::duration_cast<std::chrono::milliseconds>(Deadline::Clock::now() - start),
          socket);
    }
    switch (reply->header.type) {
      case wire::MessageType::kReject:
        throw CommError(-1, "rendezvous",
                        fmt::format("the coordinator at {} refused rank {}: {}", coordinator,
                                    self.rank, printable(reply->payload())));
      case wire::MessageType::kStatus:
        registered = decode_status(reply->payload(), world_size, coordinator);
        break;
      default:  // kTable: the only other type the socket takes
        return read_table(reply->payload(), world_size, coordinator);
    }
  }
}

}  // namespace dtrain::comm
