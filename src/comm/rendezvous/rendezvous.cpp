#include "comm/rendezvous/rendezvous.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include <zmq.hpp>

#include "comm/rendezvous/launch_env.h"
#include "comm/wire/wire.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxStringBytes = 1024;
constexpr uint64_t kMaxRendezvousPayload = 1 << 20;
constexpr int kLingerMs = 1000;
constexpr auto kPollSlice = 100ms;

void put_u32(std::vector<std::byte>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

void put_string(std::vector<std::byte>& out, const std::string& s) {
  DTRAIN_CHECK(s.size() <= kMaxStringBytes, "endpoint string of {} bytes", s.size());
  put_u32(out, static_cast<uint32_t>(s.size()));
  for (char c : s) out.push_back(static_cast<std::byte>(c));
}

// Bounds-checked reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  uint32_t u32(const char* what) {
    need(4, what);
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<uint32_t>(bytes_[pos_ + i]);
    pos_ += 4;
    return v;
  }
  std::string string(const char* what) {
    const uint32_t size = u32(what);
    if (size > kMaxStringBytes) {
      throw DataError(fmt::format("rendezvous record: {} is {} bytes, more than the limit of {}",
                                  what, size, kMaxStringBytes));
    }
    need(size, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), size);
    pos_ += size;
    return s;
  }
  std::span<const std::byte> rest() const { return bytes_.subspan(pos_); }
  void expect_end(const char* what) const {
    if (pos_ != bytes_.size()) {
      throw DataError(fmt::format("rendezvous {}: {} trailing bytes", what, bytes_.size() - pos_));
    }
  }

 private:
  void need(size_t n, const char* what) const {
    if (bytes_.size() - pos_ < n) {
      throw DataError(fmt::format("rendezvous record truncated reading {}: need {} bytes, {} left",
                                  what, n, bytes_.size() - pos_));
    }
  }
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

void put_endpoint(std::vector<std::byte>& out, const PeerEndpoint& e) {
  put_u32(out, static_cast<uint32_t>(e.rank));
  put_string(out, e.host);
  put_string(out, e.tcp_endpoint);
  put_string(out, e.ipc_endpoint);
}

PeerEndpoint read_endpoint(Reader& r) {
  PeerEndpoint e;
  e.rank = static_cast<int>(r.u32("rank"));
  e.host = r.string("host");
  e.tcp_endpoint = r.string("tcp endpoint");
  e.ipc_endpoint = r.string("ipc endpoint");
  return e;
}

std::span<const std::byte> bytes_of(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

// Sends header + payload as two frames, after `identity` when routing.
void send_frame(zmq::socket_t& socket, const zmq::message_t* identity,
                const wire::FrameHeader& header, std::span<const std::byte> payload,
                const JobAuth& auth) {
  wire::HeaderBytes bytes = wire::encode_header(header, payload, auth, /*with_crc=*/true);
  if (identity) {
    socket.send(zmq::const_buffer(identity->data(), identity->size()), zmq::send_flags::sndmore);
  }
  socket.send(zmq::const_buffer(bytes.data(), bytes.size()), zmq::send_flags::sndmore);
  socket.send(zmq::const_buffer(payload.data(), payload.size()), zmq::send_flags::none);
}

std::string printable(std::span<const std::byte> bytes) {
  std::string s;
  for (std::byte b : bytes.first(std::min<size_t>(bytes.size(), 300))) {
    const char c = static_cast<char>(b);
    s.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return s;
}

std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.empty()) return "none";
  return fmt::format("{}", fmt::join(ranks, ", "));
}

}  // namespace

std::vector<std::byte> encode_endpoints(std::span<const PeerEndpoint> endpoints) {
  std::vector<std::byte> out;
  put_u32(out, static_cast<uint32_t>(endpoints.size()));
  for (const PeerEndpoint& e : endpoints) put_endpoint(out, e);
  return out;
}

std::vector<PeerEndpoint> decode_endpoints(std::span<const std::byte> bytes, size_t max_count) {
  Reader r(bytes);
  const uint32_t count = r.u32("endpoint count");
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

struct RendezvousServer::State {
  zmq::context_t context{1};
  zmq::socket_t router{context, zmq::socket_type::router};
  // Registered ranks: the ZeroMQ routing id of the registering connection and
  // its endpoint.
  std::vector<std::optional<std::string>> identity;
  std::vector<PeerEndpoint> endpoints;
  uint64_t sequence = 0;
  // Registered ranks, for observers on other threads.
  mutable std::mutex mutex;
  mutable std::condition_variable cv;
  std::vector<int> registered;
};

std::vector<int> RendezvousServer::registered() const {
  std::lock_guard lock(state_->mutex);
  return state_->registered;
}

bool RendezvousServer::wait_until_registered(size_t count, Deadline deadline) const {
  std::unique_lock lock(state_->mutex);
  return state_->cv.wait_until(lock, deadline.at(),
                               [&] { return state_->registered.size() >= count; });
}

RendezvousServer::RendezvousServer(const std::string& bind_host, int port, int world_size,
                                   JobAuth auth, Logger& logger)
    : bind_host_(bind_host),
      world_size_(world_size),
      auth_(std::move(auth)),
      logger_(logger),
      state_(std::make_unique<State>()) {
  if (world_size < 1) throw UsageError(fmt::format("rendezvous: world size {} < 1", world_size));
  state_->identity.resize(world_size);
  state_->endpoints.resize(world_size);
  state_->router.set(zmq::sockopt::linger, kLingerMs);
  state_->router.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxRendezvousPayload));
  const std::string address = fmt::format("tcp://{}:{}", bind_host, port == 0 ? "*" : std::to_string(port));
  try {
    state_->router.bind(address);
  } catch (const zmq::error_t& e) {
    throw CommError(-1, "rendezvous",
                    fmt::format("coordinator cannot listen on {}: {}", address, e.what()));
  }
  const std::string bound = state_->router.get(zmq::sockopt::last_endpoint);
  port_ = parse_host_port(bound.substr(bound.find("://") + 3), "coordinator endpoint").port;
  thread_ = std::jthread([this](std::stop_token stop) { serve(std::move(stop)); });
}

RendezvousServer::~RendezvousServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

std::string RendezvousServer::address() const {
  const bool wildcard = bind_host_ == "*" || bind_host_ == "0.0.0.0";
  return fmt::format("{}:{}", wildcard ? std::string("127.0.0.1") : bind_host_, port_);
}

void RendezvousServer::serve(std::stop_token stop) {
  State& s = *state_;
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(world_size_),
                                 wire::kCoordinator, kMaxRendezvousPayload};
  auto reply = [&](const zmq::message_t& identity, wire::MessageType type, uint32_t receiver,
                   std::span<const std::byte> payload) {
    wire::FrameHeader h;
    h.type = type;
    h.sender = wire::kCoordinator;
    h.receiver = receiver;
    h.job_id = auth_.job_id();
    h.sequence = s.sequence++;
    send_frame(s.router, &identity, h, payload, auth_);
  };
  auto reject = [&](const zmq::message_t& identity, uint32_t receiver, const std::string& reason) {
    logger_.warn("rendezvous coordinator: refused a registration: {}", reason);
    reply(identity, wire::MessageType::kReject, receiver,
          std::as_bytes(std::span<const char>(reason.data(), reason.size())));
  };
  auto status_bytes = [&] {
    std::vector<std::byte> out;
    put_u32(out, static_cast<uint32_t>(world_size_));
    out.resize(4 + (world_size_ + 7) / 8);
    for (int r = 0; r < world_size_; ++r) {
      if (s.identity[r]) out[4 + r / 8] |= static_cast<std::byte>(1 << (r % 8));
    }
    return out;
  };
  auto send_to_all = [&](wire::MessageType type, std::span<const std::byte> payload) {
    for (int r = 0; r < world_size_; ++r) {
      if (!s.identity[r]) continue;
      zmq::message_t id(s.identity[r]->data(), s.identity[r]->size());
      reply(id, type, static_cast<uint32_t>(r), payload);
    }
  };

  while (!stop.stop_requested()) {
    zmq::pollitem_t item{s.router.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, kPollSlice);
    if ((item.revents & ZMQ_POLLIN) == 0) continue;
    std::vector<zmq::message_t> parts;
    while (true) {
      zmq::message_t part;
      if (!s.router.recv(part, zmq::recv_flags::dontwait)) break;
      const bool more = part.more();
      parts.push_back(std::move(part));
      if (!more || parts.size() > 3) break;
    }
    if (parts.size() != 3) {
      logger_.warn("rendezvous coordinator: dropped a message of {} frames (expected 3)",
                   parts.size());
      while (s.router.get(zmq::sockopt::rcvmore)) {
        zmq::message_t rest;
        (void)s.router.recv(rest, zmq::recv_flags::dontwait);
      }
      continue;
    }
    const zmq::message_t& identity = parts[0];
    auto header_span = bytes_of(parts[1]);
    wire::FrameHeader header;
    try {
      header = wire::decode_header(header_span, limits, auth_);
      wire::check_payload(header, header_span.first<wire::kHeaderBytes>(), bytes_of(parts[2]),
                          auth_);
    } catch (const DataError& e) {
      reject(identity, wire::kAnyReceiver, e.what());
      continue;
    }
    if (header.type != wire::MessageType::kRegister) {
      reject(identity, header.sender,
             fmt::format("expected a register frame, got {}", wire::to_string(header.type)));
      continue;
    }
    uint32_t their_world = 0;
    PeerEndpoint endpoint;
    try {
      Reader r(bytes_of(parts[2]));
      their_world = r.u32("world size");
      endpoint = read_endpoint(r);
      r.expect_end("registration");
    } catch (const DataError& e) {
      reject(identity, header.sender, e.what());
      continue;
    }
    const int rank = static_cast<int>(header.sender);
    if (their_world != static_cast<uint32_t>(world_size_)) {
      reject(identity, header.sender,
             fmt::format("rank {} registered with world size {}, the coordinator expects {}", rank,
                         their_world, world_size_));
      continue;
    }
    if (endpoint.rank != rank) {
      reject(identity, header.sender,
             fmt::format("frame from rank {} registers an endpoint for rank {}", rank,
                         endpoint.rank));
      continue;
    }
    const std::string id(static_cast<const char*>(identity.data()), identity.size());
    if (s.identity[rank] && *s.identity[rank] != id) {
      reject(identity, header.sender,
             fmt::format("rank {} is already registered by another process (duplicate rank; "
                         "registered endpoint {})",
                         rank, s.endpoints[rank].tcp_endpoint));
      continue;
    }
    if (complete_.load() && !s.identity[rank]) {
      reject(identity, header.sender, "rendezvous is already complete");
      continue;
    }
    const bool fresh = !s.identity[rank];
    s.identity[rank] = id;
    s.endpoints[rank] = endpoint;
    if (complete_.load()) {
      // The same connection registering again: it missed the table.
      reply(identity, wire::MessageType::kTable, header.sender, encode_endpoints(s.endpoints));
      continue;
    }
    if (fresh) {
      logger_.debug("rendezvous coordinator: rank {} registered {}", rank, endpoint.tcp_endpoint);
      {
        std::lock_guard lock(s.mutex);
        s.registered.insert(std::lower_bound(s.registered.begin(), s.registered.end(), rank), rank);
      }
      s.cv.notify_all();
    }
    const bool all = std::all_of(s.identity.begin(), s.identity.end(),
                                 [](const auto& i) { return i.has_value(); });
    if (all) {
      send_to_all(wire::MessageType::kTable, encode_endpoints(s.endpoints));
      complete_.store(true);
    } else {
      send_to_all(wire::MessageType::kStatus, status_bytes());
    }
  }
}

// ---------------------------------------------------------------- client

std::vector<PeerEndpoint> rendezvous(const std::string& coordinator, const PeerEndpoint& self,
                                     int world_size, const JobAuth& auth, Deadline deadline,
                                     Logger& logger) {
  const auto start = Deadline::Clock::now();
  const HostPort hp = parse_host_port(coordinator, "coordinator");
  if (world_size < 1 || self.rank < 0 || self.rank >= world_size) {
    throw UsageError(fmt::format("rendezvous: rank {} is outside world size {}", self.rank,
                                 world_size));
  }
  zmq::context_t context(1);
  zmq::socket_t dealer(context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxRendezvousPayload));
  const std::string host = hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host;
  dealer.connect(fmt::format("tcp://{}:{}", host, hp.port));

  std::vector<std::byte> payload;
  put_u32(payload, static_cast<uint32_t>(world_size));
  put_endpoint(payload, self);
  wire::FrameHeader h;
  h.type = wire::MessageType::kRegister;
  h.sender = static_cast<uint32_t>(self.rank);
  h.receiver = wire::kCoordinator;
  h.job_id = auth.job_id();
  send_frame(dealer, nullptr, h, payload, auth);

  const wire::FrameLimits limits{auth.job_id(), static_cast<uint32_t>(world_size),
                                 static_cast<uint32_t>(self.rank), kMaxRendezvousPayload};
  std::optional<std::vector<int>> registered;  // from the last status frame
  while (true) {
    if (deadline.expired()) {
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
          Deadline::Clock::now() - start);
      if (!registered) {
        throw TimeoutError(-1, "rendezvous", waited,
                           fmt::format("a reply from the coordinator at {} (is it running and "
                                       "reachable?)",
                                       coordinator));
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
    zmq::pollitem_t item{dealer.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::min<std::chrono::milliseconds>(deadline.remaining(), kPollSlice));
    if ((item.revents & ZMQ_POLLIN) == 0) continue;
    std::vector<zmq::message_t> parts;
    while (true) {
      zmq::message_t part;
      if (!dealer.recv(part, zmq::recv_flags::dontwait)) break;
      const bool more = part.more();
      parts.push_back(std::move(part));
      if (!more) break;
      if (parts.size() > 2) {
        while (dealer.get(zmq::sockopt::rcvmore)) (void)dealer.recv(part, zmq::recv_flags::dontwait);
        break;
      }
    }
    if (parts.size() != 2) {
      logger.warn("rendezvous rank {}: dropped a reply of {} frames", self.rank, parts.size());
      continue;
    }
    const auto header_bytes = bytes_of(parts[0]);
    const auto body = bytes_of(parts[1]);
    wire::FrameHeader reply;
    try {
      reply = wire::decode_header(header_bytes, limits, auth);
      wire::check_payload(reply, header_bytes.first<wire::kHeaderBytes>(), body, auth);
    } catch (const DataError& e) {
      // A refusal from a coordinator of another job or with another secret
      // cannot be verified; its reason is still the most useful thing to show.
      const bool looks_like_reject =
          header_bytes.size() == wire::kHeaderBytes &&
          std::to_integer<uint8_t>(header_bytes[5]) == static_cast<uint8_t>(wire::MessageType::kReject);
      if (looks_like_reject) {
        throw CommError(-1, "rendezvous",
                        fmt::format("the coordinator at {} refused rank {}: \"{}\" (its reply "
                                    "failed verification too: {})",
                                    coordinator, self.rank, printable(body), e.what()));
      }
      logger.warn("rendezvous rank {}: dropped a reply: {}", self.rank, e.what());
      continue;
    }
    switch (reply.type) {
      case wire::MessageType::kReject:
        throw CommError(-1, "rendezvous",
                        fmt::format("the coordinator at {} refused rank {}: {}", coordinator,
                                    self.rank, printable(body)));
      case wire::MessageType::kStatus: {
        Reader r(body);
        if (r.u32("world size") != static_cast<uint32_t>(world_size) ||
            r.rest().size() != static_cast<size_t>((world_size + 7) / 8)) {
          throw DataError(fmt::format("rendezvous status from {}: malformed for world size {}",
                                      coordinator, world_size));
        }
        registered.emplace();
        for (int rank = 0; rank < world_size; ++rank) {
          if ((std::to_integer<int>(r.rest()[rank / 8]) >> (rank % 8)) & 1) registered->push_back(rank);
        }
        break;
      }
      case wire::MessageType::kTable: {
        auto table = decode_endpoints(body, static_cast<size_t>(world_size));
        if (table.size() != static_cast<size_t>(world_size)) {
          throw DataError(fmt::format("rendezvous table from {} has {} endpoints, world size is {}",
                                      coordinator, table.size(), world_size));
        }
        for (int rank = 0; rank < world_size; ++rank) {
          if (table[rank].rank != rank) {
            throw DataError(fmt::format("rendezvous table from {}: entry {} is for rank {}",
                                        coordinator, rank, table[rank].rank));
          }
        }
        return table;
      }
      default:
        logger.warn("rendezvous rank {}: ignored a {} frame from the coordinator", self.rank,
                    wire::to_string(reply.type));
    }
  }
}

}  // namespace dtrain::comm
