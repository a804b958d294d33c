#include "comm/rendezvous/elastic_rendezvous.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <zmq.hpp>

#include "comm/rendezvous/launch_env.h"
#include "comm/wire/wire.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Request kinds (the first u32 of a kRegister payload) and the kinds of
// their replies (the first u32 of a kTable, kStatus or kReject payload).
constexpr uint32_t kJoin = 1;
constexpr uint32_t kEndpoint = 2;
constexpr uint32_t kPoll = 3;
constexpr uint32_t kFinished = 4;        // reply to kJoin: the job finished training
constexpr uint32_t kNone = 0xFFFFFFFFu;  // "no generation"

constexpr uint64_t kMaxPayload = 1 << 20;
constexpr int kLingerMs = 1000;
// The server's poll slice: how late it notices a settle deadline or a slot
// reported dead (registrations themselves are answered at once).
constexpr auto kServerSlice = 20ms;
constexpr auto kClientSlice = 100ms;

void put_u32(std::vector<std::byte>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

// Bounds-checked reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  uint32_t u32(const char* what) {
    if (bytes_.size() - pos_ < 4) {
      throw DataError(fmt::format("elastic rendezvous: truncated reading {} ({} bytes left)", what,
                                  bytes_.size() - pos_));
    }
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<uint32_t>(bytes_[pos_ + i]);
    pos_ += 4;
    return v;
  }
  std::span<const std::byte> rest() const { return bytes_.subspan(pos_); }
  void expect_end(const char* what) const {
    if (pos_ != bytes_.size()) {
      throw DataError(
          fmt::format("elastic rendezvous {}: {} trailing bytes", what, bytes_.size() - pos_));
    }
  }

 private:
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

std::span<const std::byte> bytes_of(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

void send_frame(zmq::socket_t& socket, const std::string* identity, const wire::FrameHeader& h,
                std::span<const std::byte> payload, const JobAuth& auth) {
  const wire::HeaderBytes bytes = wire::encode_header(h, payload, auth, /*with_crc=*/true);
  if (identity != nullptr) {
    socket.send(zmq::const_buffer(identity->data(), identity->size()), zmq::send_flags::sndmore);
  }
  socket.send(zmq::const_buffer(bytes.data(), bytes.size()), zmq::send_flags::sndmore);
  socket.send(zmq::const_buffer(payload.data(), payload.size()), zmq::send_flags::none);
}

// Receives one multipart message (up to `max_parts`) without blocking.
std::vector<zmq::message_t> recv_parts(zmq::socket_t& socket, size_t max_parts) {
  std::vector<zmq::message_t> parts;
  while (true) {
    zmq::message_t part;
    if (!socket.recv(part, zmq::recv_flags::dontwait)) break;
    const bool more = part.more();
    parts.push_back(std::move(part));
    if (!more) break;
    if (parts.size() > max_parts) {
      while (socket.get(zmq::sockopt::rcvmore)) (void)socket.recv(part, zmq::recv_flags::dontwait);
      break;
    }
  }
  return parts;
}

std::string text_of(std::span<const std::byte> bytes) {
  std::string s;
  for (std::byte b : bytes.first(std::min<size_t>(bytes.size(), 500))) {
    const char c = static_cast<char>(b);
    s.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return s;
}

std::string slot_list(const std::vector<int>& slots) {
  return slots.empty() ? std::string("none") : fmt::format("{}", fmt::join(slots, ", "));
}

}  // namespace

// ---------------------------------------------------------------- server

struct ElasticRendezvousServer::State {
  zmq::context_t context{1};
  zmq::socket_t router{context, zmq::socket_type::router};
  uint64_t sequence = 0;

  // Shared with the launcher's thread.
  mutable std::mutex mutex;
  // Per slot: 0 while no process runs for it, else that process's number
  // (1 for the first, 2 for its replacement, ...).
  std::vector<uint64_t> alive;
  std::vector<uint64_t> started;  // processes started per slot
  bool finished = false;
  std::string stopped;                 // non-empty once stop() ran
  std::optional<uint32_t> generation;  // the last generation formed

  // Server thread only.
  std::vector<int> members;              // slots of `generation`, by rank
  std::vector<uint64_t> member_process;  // by rank: the process that joined
  struct Joining {
    std::string identity;
    bool member = false;  // of the current generation
  };
  std::map<int, Joining> joining;  // by slot: the open membership round
  std::optional<Clock::time_point> settle_from;
  // The endpoint round of the newest generation.
  std::vector<std::optional<std::pair<std::string, PeerEndpoint>>> endpoints;
  bool endpoints_done = false;
  std::string endpoints_failure;  // why the round failed, if it did
};

ElasticRendezvousServer::ElasticRendezvousServer(const std::string& bind_host, int port,
                                                 ElasticRendezvousOptions options, JobAuth auth,
                                                 Logger& logger)
    : bind_host_(bind_host),
      options_(options),
      auth_(std::move(auth)),
      logger_(logger),
      state_(std::make_unique<State>()) {
  if (options_.slots < 1 || options_.min_workers < 1 || options_.min_workers > options_.slots ||
      options_.settle.count() < 0) {
    throw UsageError(fmt::format(
        "elastic rendezvous: need 1 <= min_workers ({}) <= slots ({}) and settle >= 0 ({} ms)",
        options_.min_workers, options_.slots, options_.settle.count()));
  }
  state_->alive.assign(static_cast<size_t>(options_.slots), 0);
  state_->started.assign(static_cast<size_t>(options_.slots), 0);
  state_->router.set(zmq::sockopt::linger, kLingerMs);
  state_->router.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxPayload));
  const std::string address =
      fmt::format("tcp://{}:{}", bind_host, port == 0 ? "*" : std::to_string(port));
  try {
    state_->router.bind(address);
  } catch (const zmq::error_t& e) {
    throw CommError(-1, "elastic rendezvous",
                    fmt::format("coordinator cannot listen on {}: {}", address, e.what()));
  }
  const std::string bound = state_->router.get(zmq::sockopt::last_endpoint);
  port_ = parse_host_port(bound.substr(bound.find("://") + 3), "coordinator endpoint").port;
  thread_ = std::jthread([this](std::stop_token stop) { serve(std::move(stop)); });
}

ElasticRendezvousServer::~ElasticRendezvousServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

std::string ElasticRendezvousServer::address() const {
  const bool wildcard = bind_host_ == "*" || bind_host_ == "0.0.0.0";
  return fmt::format("{}:{}", wildcard ? std::string("127.0.0.1") : bind_host_, port_);
}

void ElasticRendezvousServer::set_alive(int slot, bool alive) {
  if (slot < 0 || slot >= options_.slots) {
    throw UsageError(
        fmt::format("elastic rendezvous: slot {} is outside 0..{}", slot, options_.slots - 1));
  }
  std::lock_guard lock(state_->mutex);
  const auto i = static_cast<size_t>(slot);
  state_->alive[i] = alive ? ++state_->started[i] : 0;
}

void ElasticRendezvousServer::finish() {
  std::lock_guard lock(state_->mutex);
  state_->finished = true;
}

void ElasticRendezvousServer::stop(const std::string& reason) {
  std::lock_guard lock(state_->mutex);
  state_->stopped = reason.empty() ? std::string("the job is stopping") : reason;
}

std::optional<uint32_t> ElasticRendezvousServer::generation() const {
  std::lock_guard lock(state_->mutex);
  return state_->generation;
}

void ElasticRendezvousServer::serve(std::stop_token stop) {
  State& s = *state_;
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(options_.slots),
                                 wire::kCoordinator, kMaxPayload};
  auto reply = [&](const std::string& identity, wire::MessageType type, uint32_t slot,
                   const std::vector<std::byte>& payload) {
    wire::FrameHeader h;
    h.type = type;
    h.sender = wire::kCoordinator;
    h.receiver = slot;
    h.job_id = auth_.job_id();
    h.sequence = s.sequence++;
    send_frame(s.router, &identity, h, payload, auth_);
  };
  auto refuse = [&](const std::string& identity, uint32_t slot, uint32_t kind,
                    const std::string& reason) {
    logger_.warn("elastic coordinator: refused slot {}: {}", static_cast<int>(slot), reason);
    std::vector<std::byte> payload;
    put_u32(payload, kind);
    for (char c : reason) payload.push_back(static_cast<std::byte>(c));
    reply(identity, wire::MessageType::kReject, slot, payload);
  };
  auto answer_finished = [&](const std::string& identity, int slot) {
    std::vector<std::byte> payload;
    put_u32(payload, kFinished);
    reply(identity, wire::MessageType::kTable, static_cast<uint32_t>(slot), payload);
  };

  // Whether the process that joined the current generation for `slot` still
  // runs (not a replacement of it).
  auto member_alive = [&](int slot, const std::vector<uint64_t>& alive) {
    const auto it = std::find(s.members.begin(), s.members.end(), slot);
    if (it == s.members.end()) return false;
    const uint64_t process = alive[static_cast<size_t>(slot)];
    return process != 0 && process == s.member_process[static_cast<size_t>(it - s.members.begin())];
  };

  // Closes the membership round when it may; see the header.
  auto try_close_round = [&](const std::vector<uint64_t>& alive) {
    if (s.joining.empty()) return;
    const bool has_member = std::any_of(s.joining.begin(), s.joining.end(),
                                        [](const auto& j) { return j.second.member; });
    if (s.generation && !has_member) return;
    const auto joined = static_cast<int>(s.joining.size());
    if (joined < options_.min_workers) return;
    // Awaited: every alive slot for generation 0, then the alive members
    // of the current generation (a new worker is only taken once it joined).
    auto awaited = [&](int slot) {
      return alive[static_cast<size_t>(slot)] != 0 && (!s.generation || member_alive(slot, alive));
    };
    bool every_alive = true;
    for (int slot = 0; slot < options_.slots; ++slot) {
      if (awaited(slot) && s.joining.count(slot) == 0) every_alive = false;
    }
    const bool settled = s.settle_from && Clock::now() - *s.settle_from >= options_.settle;
    if (!every_alive && !settled) return;

    std::vector<int> order;
    for (int slot : s.members) {
      auto it = s.joining.find(slot);
      if (it != s.joining.end() && it->second.member) order.push_back(slot);
    }
    for (const auto& [slot, j] : s.joining) {
      if (!j.member) order.push_back(slot);
    }
    const uint32_t generation = s.generation ? *s.generation + 1 : 0;
    if (!every_alive) {
      std::vector<int> missing;
      for (int slot = 0; slot < options_.slots; ++slot) {
        if (awaited(slot) && s.joining.count(slot) == 0) missing.push_back(slot);
      }
      logger_.warn(
          "elastic coordinator: generation {} forms without slot(s) {}, which did not "
          "join within {} ms",
          generation, slot_list(missing), options_.settle.count());
    }
    std::vector<std::byte> payload;
    put_u32(payload, kJoin);
    put_u32(payload, generation);
    put_u32(payload, static_cast<uint32_t>(order.size()));
    for (int slot : order) put_u32(payload, static_cast<uint32_t>(slot));
    for (int slot : order)
      reply(s.joining[slot].identity, wire::MessageType::kTable, static_cast<uint32_t>(slot),
            payload);
    logger_.info("elastic coordinator: generation {} formed: {} worker(s), slots by rank {}",
                 generation, order.size(), slot_list(order));
    s.member_process.clear();
    for (int slot : order) s.member_process.push_back(alive[static_cast<size_t>(slot)]);
    s.members = std::move(order);
    s.endpoints.assign(s.members.size(), std::nullopt);
    s.endpoints_done = false;
    s.endpoints_failure.clear();
    s.joining.clear();
    s.settle_from.reset();
    std::lock_guard lock(s.mutex);
    s.generation = generation;
  };

  // Fails the endpoint round of the newest generation if a member is gone.
  auto check_endpoint_round = [&](const std::vector<uint64_t>& alive) {
    if (s.endpoints_done || !s.generation) return;
    for (size_t rank = 0; rank < s.members.size(); ++rank) {
      const int slot = s.members[rank];
      if (alive[static_cast<size_t>(slot)] == s.member_process[rank]) continue;
      const std::string reason =
          fmt::format("generation {} lost slot {} (rank {}) before it formed; join again",
                      *s.generation, slot, rank);
      for (size_t r = 0; r < s.members.size(); ++r) {
        if (s.endpoints[r]) {
          refuse(s.endpoints[r]->first, static_cast<uint32_t>(s.members[r]), kEndpoint, reason);
        }
      }
      s.endpoints_done = true;  // any later kEndpoint for it is refused too
      s.endpoints_failure = reason;
      return;
    }
  };

  auto handle = [&](const std::string& identity, uint32_t slot_id, std::span<const std::byte> body,
                    const std::vector<uint64_t>& alive, bool finished, const std::string& stopped) {
    const int slot = static_cast<int>(slot_id);
    Reader r(body);
    const uint32_t kind = r.u32("request kind");
    if (!stopped.empty() && kind != kPoll) {
      refuse(identity, slot_id, kind, stopped);
      return;
    }
    if (kind == kPoll) {
      r.expect_end("poll");
      uint32_t waiting = 0;
      for (const auto& [other, j] : s.joining) waiting += j.member ? 0 : 1;
      std::vector<std::byte> payload;
      put_u32(payload, kPoll);
      put_u32(payload, s.generation.value_or(kNone));
      put_u32(payload, waiting);
      reply(identity, wire::MessageType::kStatus, slot_id, payload);
      return;
    }
    if (kind == kJoin) {
      const uint32_t member_of = r.u32("member of");
      r.expect_end("join");
      if (finished) {
        answer_finished(identity, slot);
        return;
      }
      if (!alive[static_cast<size_t>(slot)]) {
        refuse(identity, slot_id, kind,
               fmt::format("slot {} is not alive (the launcher reported "
                           "its process ended)",
                           slot));
        return;
      }
      const bool member = member_of != kNone;
      if (member && (!s.generation || member_of != *s.generation || !member_alive(slot, alive))) {
        refuse(identity, slot_id, kind,
               fmt::format("slot {} says it is a member of generation {}, but the group is at "
                           "generation {} without it (it was left out); restart the worker",
                           slot, member_of,
                           s.generation ? fmt::format("{}", *s.generation) : std::string("none")));
        return;
      }
      auto it = s.joining.find(slot);
      if (it != s.joining.end() && it->second.identity != identity) {
        refuse(identity, slot_id, kind,
               fmt::format("slot {} is already joining from another process", slot));
        return;
      }
      s.joining[slot] = State::Joining{identity, member};
      if (!s.settle_from && (member || !s.generation)) s.settle_from = Clock::now();
      logger_.debug("elastic coordinator: slot {} joins generation {} ({})", slot,
                    s.generation ? *s.generation + 1 : 0, member ? "member" : "new worker");
      try_close_round(alive);
      return;
    }
    if (kind == kEndpoint) {
      const uint32_t generation = r.u32("generation");
      const std::vector<PeerEndpoint> record = decode_endpoints(r.rest(), 1);
      if (record.size() != 1) throw DataError("elastic rendezvous endpoint: no endpoint record");
      const auto rank_of = std::find(s.members.begin(), s.members.end(), slot);
      if (s.generation && generation == *s.generation && !s.endpoints_failure.empty()) {
        refuse(identity, slot_id, kind, s.endpoints_failure);
        return;
      }
      if (!s.generation || generation != *s.generation || rank_of == s.members.end() ||
          s.endpoints_done) {
        refuse(identity, slot_id, kind,
               fmt::format("slot {} sent its endpoint for generation {}, which is not the forming "
                           "generation (newest: {}); join again",
                           slot, generation,
                           s.generation ? fmt::format("{}", *s.generation) : std::string("none")));
        return;
      }
      const auto rank = static_cast<size_t>(rank_of - s.members.begin());
      if (record[0].rank != static_cast<int>(rank)) {
        refuse(identity, slot_id, kind,
               fmt::format("slot {} registers an endpoint for rank {}, its rank is {}", slot,
                           record[0].rank, rank));
        return;
      }
      s.endpoints[rank] = std::make_pair(identity, record[0]);
      if (!std::all_of(s.endpoints.begin(), s.endpoints.end(),
                       [](const auto& e) { return e.has_value(); })) {
        return;
      }
      std::vector<PeerEndpoint> table;
      for (const auto& e : s.endpoints) table.push_back(e->second);
      std::vector<std::byte> payload;
      put_u32(payload, kEndpoint);
      put_u32(payload, *s.generation);
      const std::vector<std::byte> encoded = encode_endpoints(table);
      payload.insert(payload.end(), encoded.begin(), encoded.end());
      for (size_t r2 = 0; r2 < s.members.size(); ++r2) {
        reply(s.endpoints[r2]->first, wire::MessageType::kTable,
              static_cast<uint32_t>(s.members[r2]), payload);
      }
      s.endpoints_done = true;
      return;
    }
    refuse(identity, slot_id, kind, fmt::format("unknown request kind {}", kind));
  };

  while (!stop.stop_requested()) {
    std::vector<uint64_t> alive;
    bool finished = false;
    std::string stopped;
    {
      std::lock_guard lock(s.mutex);
      alive = s.alive;
      finished = s.finished;
      stopped = s.stopped;
    }
    // Registrations of slots that ended, and the answers owed to waiting
    // workers once the job finished or stopped.
    for (auto it = s.joining.begin(); it != s.joining.end();) {
      if (!stopped.empty()) {
        refuse(it->second.identity, static_cast<uint32_t>(it->first), kJoin, stopped);
        it = s.joining.erase(it);
      } else if (finished) {
        answer_finished(it->second.identity, it->first);
        it = s.joining.erase(it);
      } else if (!alive[static_cast<size_t>(it->first)]) {
        it = s.joining.erase(it);
      } else {
        ++it;
      }
    }
    check_endpoint_round(alive);
    try_close_round(alive);

    zmq::pollitem_t item{s.router.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, kServerSlice);
    if ((item.revents & ZMQ_POLLIN) == 0) continue;
    std::vector<zmq::message_t> parts = recv_parts(s.router, 3);
    if (parts.size() != 3) {
      logger_.warn("elastic coordinator: dropped a message of {} frames (expected 3)",
                   parts.size());
      continue;
    }
    const std::string identity(static_cast<const char*>(parts[0].data()), parts[0].size());
    const auto header_bytes = bytes_of(parts[1]);
    wire::FrameHeader header;
    try {
      header = wire::decode_header(header_bytes, limits, auth_);
      wire::check_payload(header, header_bytes.first<wire::kHeaderBytes>(), bytes_of(parts[2]),
                          auth_);
      if (header.type != wire::MessageType::kRegister) {
        throw DataError(
            fmt::format("expected a register frame, got {}", wire::to_string(header.type)));
      }
    } catch (const DataError& e) {
      // Unauthenticated: answered without touching the state.
      logger_.warn("elastic coordinator: refused a frame: {}", e.what());
      std::vector<std::byte> payload;
      put_u32(payload, kNone);
      const std::string reason = e.what();
      for (char c : reason) payload.push_back(static_cast<std::byte>(c));
      wire::FrameHeader h;
      h.type = wire::MessageType::kReject;
      h.sender = wire::kCoordinator;
      h.receiver = wire::kAnyReceiver;
      h.job_id = auth_.job_id();
      h.sequence = s.sequence++;
      send_frame(s.router, &identity, h, payload, auth_);
      continue;
    }
    {
      // The launcher's view as of this message (it may have changed while polling).
      std::lock_guard lock(s.mutex);
      alive = s.alive;
      finished = s.finished;
      stopped = s.stopped;
    }
    try {
      handle(identity, header.sender, bytes_of(parts[2]), alive, finished, stopped);
    } catch (const DataError& e) {
      refuse(identity, header.sender, kNone, e.what());
    }
  }
}

// ---------------------------------------------------------------- client

struct ElasticRendezvousClient::Socket {
  zmq::context_t context{1};
  zmq::socket_t dealer{context, zmq::socket_type::dealer};
};

ElasticRendezvousClient::ElasticRendezvousClient(const std::string& coordinator, int slot,
                                                 int slots, JobAuth auth, Logger& logger)
    : coordinator_(coordinator),
      slot_(slot),
      slots_(slots),
      auth_(std::move(auth)),
      logger_(logger),
      socket_(std::make_unique<Socket>()) {
  if (slots < 1 || slot < 0 || slot >= slots) {
    throw UsageError(fmt::format("elastic rendezvous: slot {} is outside 0..{}", slot, slots - 1));
  }
  const HostPort hp = parse_host_port(coordinator, "elastic coordinator");
  socket_->dealer.set(zmq::sockopt::linger, 0);
  socket_->dealer.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxPayload));
  const std::string host = hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host;
  socket_->dealer.connect(fmt::format("tcp://{}:{}", host, hp.port));
}

ElasticRendezvousClient::~ElasticRendezvousClient() = default;

void ElasticRendezvousClient::send(uint32_t kind, const std::vector<std::byte>& body) {
  std::vector<std::byte> payload;
  put_u32(payload, kind);
  payload.insert(payload.end(), body.begin(), body.end());
  wire::FrameHeader h;
  h.type = wire::MessageType::kRegister;
  h.sender = static_cast<uint32_t>(slot_);
  h.receiver = wire::kCoordinator;
  h.job_id = auth_.job_id();
  send_frame(socket_->dealer, nullptr, h, payload, auth_);
}

std::optional<std::pair<uint32_t, std::vector<std::byte>>> ElasticRendezvousClient::read_reply(
    std::chrono::milliseconds timeout) {
  zmq::pollitem_t item{socket_->dealer.handle(), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, timeout);
  if ((item.revents & ZMQ_POLLIN) == 0) return std::nullopt;
  std::vector<zmq::message_t> parts = recv_parts(socket_->dealer, 2);
  if (parts.size() != 2) {
    logger_.warn("elastic rendezvous slot {}: dropped a reply of {} frames", slot_, parts.size());
    return std::nullopt;
  }
  const wire::FrameLimits limits{auth_.job_id(), static_cast<uint32_t>(slots_),
                                 static_cast<uint32_t>(slot_), kMaxPayload};
  const auto header_bytes = bytes_of(parts[0]);
  const auto body = bytes_of(parts[1]);
  wire::FrameHeader header;
  try {
    header = wire::decode_header(header_bytes, limits, auth_);
    wire::check_payload(header, header_bytes.first<wire::kHeaderBytes>(), body, auth_);
  } catch (const DataError& e) {
    const bool looks_like_reject = header_bytes.size() == wire::kHeaderBytes &&
                                   std::to_integer<uint8_t>(header_bytes[5]) ==
                                       static_cast<uint8_t>(wire::MessageType::kReject);
    if (looks_like_reject) {
      throw CommError(-1, "elastic rendezvous",
                      fmt::format("the coordinator at {} refused slot {}: \"{}\" (its reply failed "
                                  "verification too: {})",
                                  coordinator_, slot_, text_of(body), e.what()));
    }
    logger_.warn("elastic rendezvous slot {}: dropped a reply: {}", slot_, e.what());
    return std::nullopt;
  }
  Reader r(body);
  const uint32_t kind = r.u32("reply kind");
  if (header.type == wire::MessageType::kReject) {
    if (kind == kPoll) return std::nullopt;  // a refused poll only means "nothing to report"
    throw CommError(-1, "elastic rendezvous",
                    fmt::format("the coordinator at {} refused slot {}: {}", coordinator_, slot_,
                                text_of(r.rest())));
  }
  std::vector<std::byte> rest(r.rest().begin(), r.rest().end());
  return std::make_pair(kind, std::move(rest));
}

std::vector<std::byte> ElasticRendezvousClient::await(uint32_t kind, const std::string& what,
                                                      Deadline deadline) {
  const auto start = Clock::now();
  while (!deadline.expired()) {
    auto reply =
        read_reply(std::min<std::chrono::milliseconds>(deadline.remaining(), kClientSlice));
    if (!reply) continue;
    if (reply->first == kPoll) {
      poll_outstanding_ = false;
      continue;
    }
    if (reply->first == kind || (kind == kJoin && reply->first == kFinished)) {
      if (reply->first == kFinished) return {};
      return std::move(reply->second);
    }
    logger_.warn("elastic rendezvous slot {}: ignored a reply of kind {} while awaiting {}", slot_,
                 reply->first, what);
  }
  throw TimeoutError(
      -1, "elastic rendezvous",
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start),
      fmt::format("{} from the coordinator at {} (slot {})", what, coordinator_, slot_));
}

std::optional<ElasticGeneration> ElasticRendezvousClient::join(std::optional<uint32_t> member_of,
                                                               Deadline deadline) {
  std::vector<std::byte> body;
  put_u32(body, member_of.value_or(kNone));
  send(kJoin, body);
  const std::vector<std::byte> reply =
      await(kJoin,
            fmt::format("the group to re-form (generation {})",
                        member_of ? fmt::format("{}", *member_of + 1) : std::string("next")),
            deadline);
  if (reply.empty()) return std::nullopt;  // finished
  Reader r(reply);
  ElasticGeneration m;
  m.generation = r.u32("generation");
  const uint32_t count = r.u32("member count");
  if (count < 1 || count > static_cast<uint32_t>(slots_)) {
    throw DataError(fmt::format(
        "elastic rendezvous: membership of {} workers, the job has {} slots", count, slots_));
  }
  m.rank = -1;
  for (uint32_t i = 0; i < count; ++i) {
    const auto slot = static_cast<int>(r.u32("slot"));
    if (slot == slot_) m.rank = static_cast<int>(i);
    m.slots.push_back(slot);
  }
  r.expect_end("membership");
  waiting_ = 0;  // what polls reported concerned the round that just closed
  if (m.rank < 0) {
    throw DataError(fmt::format("elastic rendezvous: generation {} does not include slot {}",
                                m.generation, slot_));
  }
  return m;
}

std::vector<PeerEndpoint> ElasticRendezvousClient::exchange_endpoints(uint32_t generation,
                                                                      const PeerEndpoint& self,
                                                                      Deadline deadline) {
  std::vector<std::byte> body;
  put_u32(body, generation);
  const std::vector<std::byte> record = encode_endpoints(std::span<const PeerEndpoint>(&self, 1));
  body.insert(body.end(), record.begin(), record.end());
  send(kEndpoint, body);
  const std::vector<std::byte> reply =
      await(kEndpoint, fmt::format("the endpoints of generation {}", generation), deadline);
  Reader r(reply);
  const uint32_t got = r.u32("generation");
  if (got != generation) {
    throw DataError(fmt::format("elastic rendezvous: endpoints of generation {}, expected {}", got,
                                generation));
  }
  std::vector<PeerEndpoint> table = decode_endpoints(r.rest(), static_cast<size_t>(slots_));
  for (size_t rank = 0; rank < table.size(); ++rank) {
    if (table[rank].rank != static_cast<int>(rank)) {
      throw DataError(
          fmt::format("elastic rendezvous: table entry {} is for rank {}", rank, table[rank].rank));
    }
  }
  return table;
}

uint32_t ElasticRendezvousClient::poll() {
  while (true) {
    std::optional<std::pair<uint32_t, std::vector<std::byte>>> reply;
    try {
      reply = read_reply(std::chrono::milliseconds(0));
    } catch (const Error& e) {
      logger_.warn("elastic rendezvous slot {}: poll: {}", slot_, e.what());
      poll_outstanding_ = false;
      break;
    }
    if (!reply) break;
    if (reply->first != kPoll) continue;
    poll_outstanding_ = false;
    Reader r(reply->second);
    r.u32("generation");
    waiting_ = r.u32("waiting");
  }
  if (!poll_outstanding_) {
    send(kPoll, {});
    poll_outstanding_ = true;
  }
  return waiting_;
}

}  // namespace dtrain::comm
