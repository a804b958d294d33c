#include "ps/replication.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <utility>

#include "core/error.h"
#include "ps/messages.h"

namespace dtrain::ps {

using std::chrono::milliseconds;

std::vector<int> backups_of(int server, int num_servers, int replicas) {
  std::vector<int> out;
  for (int k = 1; k <= replicas; ++k) out.push_back((server + k) % num_servers);
  return out;
}

bool backs_up(int backup, int primary, int num_servers, int replicas) {
  const int distance = ((backup - primary) % num_servers + num_servers) % num_servers;
  return distance >= 1 && distance <= replicas;
}

struct BackupChain::Backup {
  int server = 0;
  std::unique_ptr<comm::wire::FramedSocket> socket;
  std::optional<uint64_t> acked;  // the version its copy is known to hold
  struct Pending {
    uint64_t new_version = 0;
    std::vector<std::byte> bytes;
  };
  std::deque<Pending> pending;                     // updates sent, not yet acknowledged
  bool need_state = false;                         // send the whole state at the next service()
  std::optional<uint64_t> state_version;           // a state sent, not yet acknowledged
  std::vector<std::byte> state_bytes;              // ... kept for resending
  std::optional<Clock::time_point> waiting_since;  // the oldest unacknowledged send
  Clock::time_point last_sent;
  bool lagging = false;  // past the deadline: pulls do not wait for it
  bool failed = false;   // it answered kError: nothing more is sent to it
  // ZMQ_EVENT_DISCONNECTED of `socket`: a backup whose connection broke
  // (its process died) is lagging at once, not after `timeout`. Last
  // member: closed before the socket it watches.
  zmq::socket_t monitor;
};

BackupChain::BackupChain(zmq::context_t& context, BackupChainOptions options,
                         const comm::JobAuth& auth, Logger& logger)
    : options_(std::move(options)), logger_(logger) {
  const int s = options_.server;
  if (options_.replicas < 1 || options_.replicas >= options_.num_servers) {
    throw ConfigError(fmt::format("ps replicas: {} with {} servers; need 0 < R < S (0: none)",
                                  options_.replicas, options_.num_servers));
  }
  if (options_.server_endpoints.size() != static_cast<size_t>(options_.num_servers)) {
    throw UsageError(fmt::format("ps server {}: {} server endpoints for {} servers", s,
                                 options_.server_endpoints.size(), options_.num_servers));
  }
  for (int b : backups_of(s, options_.num_servers, options_.replicas)) {
    comm::wire::FramedSocketOptions o;
    o.name = fmt::format("ps server {} replicating to server {}", s, b);
    o.peer = b;
    o.rank = server_rank(s);
    o.limits.job_id = auth.job_id();
    o.limits.world_size = static_cast<uint32_t>(options_.num_servers);
    o.limits.receiver = server_rank(s);
    o.limits.max_payload_bytes = options_.max_payload_bytes;
    o.accepted = {comm::wire::MessageType::kData};
    o.unbounded_queues = true;
    o.private_ipc = options_.private_ipc;
    auto backup = std::make_unique<Backup>();
    backup->server = b;
    backup->socket = std::make_unique<comm::wire::FramedSocket>(
        context, comm::wire::FramedSocket::Role::kDealer,
        options_.server_endpoints[static_cast<size_t>(b)], std::move(o), auth, logger_);
    const std::string address =
        fmt::format("inproc://ps-backup-chain-{}-{}", static_cast<const void*>(backup.get()), b);
    if (zmq_socket_monitor(backup->socket->socket().handle(), address.c_str(),
                           ZMQ_EVENT_DISCONNECTED) != 0) {
      throw CommError(b, "ps replicate",
                      fmt::format("server {} cannot watch its link to backup "
                                  "server {}: {}",
                                  s, b, zmq_strerror(zmq_errno())));
    }
    backup->monitor = zmq::socket_t(context, zmq::socket_type::pair);
    backup->monitor.set(zmq::sockopt::linger, 0);
    backup->monitor.connect(address);
    backups_.push_back(std::move(backup));
  }
}

BackupChain::~BackupChain() = default;

void BackupChain::record_touch(uint32_t table, std::span<const uint64_t> keys) {
  ReplicaOp op;
  op.kind = ReplicaOp::Kind::kRowsTouch;
  op.table = table;
  op.keys.assign(keys.begin(), keys.end());
  log_.push_back(std::move(op));
}

void BackupChain::record_dense(std::span<const float> grad, float lr) {
  ReplicaOp op;
  op.kind = ReplicaOp::Kind::kDenseApply;
  op.lr = lr;
  op.floats.assign(grad.begin(), grad.end());
  log_.push_back(std::move(op));
}

void BackupChain::record_rows(uint32_t table, std::span<const uint64_t> keys,
                              std::span<const float> grads, float lr) {
  ReplicaOp op;
  op.kind = ReplicaOp::Kind::kRowsApply;
  op.table = table;
  op.lr = lr;
  op.keys.assign(keys.begin(), keys.end());
  op.floats.assign(grads.begin(), grads.end());
  log_.push_back(std::move(op));
}

void BackupChain::send(Backup& b, std::vector<std::byte> payload, Clock::time_point now) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = server_rank(b.server);
  b.socket->send({}, header, std::move(payload));
  b.last_sent = now;
  if (!b.waiting_since) b.waiting_since = now;
}

void BackupChain::ship(uint64_t base_version, uint64_t new_version) {
  ReplicaUpdate update;
  update.primary = static_cast<uint32_t>(options_.server);
  update.base_version = base_version;
  update.new_version = new_version;
  update.ops = std::move(log_);
  log_.clear();
  const std::vector<std::byte> bytes = encode_replica(update);
  const auto now = Clock::now();
  for (auto& b : backups_) {
    if (b->failed || b->lagging) continue;  // a lagging one is probed by service()
    b->pending.push_back({new_version, bytes});
    send(*b, bytes, now);
  }
}

void BackupChain::invalidate() {
  log_.clear();
  for (auto& b : backups_) {
    b->need_state = true;
    b->state_version.reset();
  }
}

void BackupChain::add_poll_items(std::vector<zmq::pollitem_t>& items) {
  for (auto& b : backups_) items.push_back(b->socket->poll_item());
}

void BackupChain::on_ack(Backup& b, const ReplicaAck& ack, uint64_t version) {
  // The chain ships at term 0 (a range's first primary: an acting primary
  // replicates nothing); a backup that knows a higher term took the range over.
  if (ack.term > 0 && !superseded_) superseded_ = Superseded{b.server, ack.term};
  switch (ack.status) {
    case ReplicaAck::Status::kOk:
      b.acked = std::max(b.acked.value_or(0), ack.version);
      if (b.state_version && ack.version >= *b.state_version) {
        b.state_version.reset();
        b.state_bytes.clear();
      }
      while (!b.pending.empty() && b.pending.front().new_version <= ack.version) {
        b.pending.pop_front();
      }
      if (b.pending.empty() && !b.state_version) b.waiting_since.reset();
      if (b.lagging && *b.acked >= version) {
        b.lagging = false;
        logger_.info(
            "ps server {}: backup server {} caught up at version {}; {} is replicated "
            "again",
            options_.server, b.server, version, range_);
      }
      return;
    case ReplicaAck::Status::kNeedState:
      if (!b.state_version) b.need_state = true;  // a state in flight answers it already
      return;
    case ReplicaAck::Status::kError:
    case ReplicaAck::Status::kTakenOver:  // only a fetch's answer; never to an update
      b.failed = true;
      logger_.error(
          "ps server {}: backup server {} refused {} at version {}: {}; the range is "
          "not replicated there any more",
          options_.server, b.server, range_, version, ack.error);
      return;
  }
}

bool BackupChain::disconnected(Backup& b) {
  bool broke = false;
  while (true) {
    std::array<zmq::message_t, 1> event;  // then the endpoint, discarded
    if (comm::wire::receive_parts(b.monitor, event) == 0) break;
    broke = broke || comm::wire::monitor_event(event[0]) == ZMQ_EVENT_DISCONNECTED;
  }
  return broke;
}

void BackupChain::check_deadline(Backup& b, Clock::time_point now, uint64_t version) {
  const bool broke = disconnected(b);
  if (b.lagging) return;
  if (broke) {
    logger_.error(
        "ps server {}: lost the connection to backup server {} (it holds version {} of {}); "
        "serving on without it, the range is not replicated until it catches up",
        options_.server, b.server, b.acked ? fmt::format("{}", *b.acked) : std::string("none"),
        range_);
  } else if (!b.waiting_since || now - *b.waiting_since <= options_.timeout) {
    return;
  } else {
    logger_.error(
        "ps server {}: backup server {} has not acknowledged version {} of {} within {} ms "
        "(it holds version {}); serving on without it, the range is not replicated until it "
        "catches up",
        options_.server, b.server, version, range_, options_.timeout.count(),
        b.acked ? fmt::format("{}", *b.acked) : std::string("none"));
  }
  b.lagging = true;
  // Nothing is queued for it any more; service() probes it instead.
  b.pending.clear();
  b.state_version.reset();
  b.state_bytes.clear();
  b.waiting_since.reset();
}

std::vector<std::byte> BackupChain::probe(uint64_t version) const {
  // An empty update from `version` to itself: a backup whose copy is there
  // acknowledges it, any other answers kNeedState.
  ReplicaUpdate update;
  update.primary = static_cast<uint32_t>(options_.server);
  update.base_version = version;
  update.new_version = version;
  return encode_replica(update);
}

void BackupChain::service(Clock::time_point now, uint64_t version,
                          const std::function<ReplicaState()>& state) {
  std::optional<std::vector<std::byte>> state_bytes;
  for (auto& bp : backups_) {
    Backup& b = *bp;
    while (std::optional<comm::wire::Frame> frame = b.socket->try_receive()) {
      try {
        ReplicaMessage m = decode_replica(frame->payload());
        const auto* ack = std::get_if<ReplicaAck>(&m);
        if (ack == nullptr || ack->primary != static_cast<uint32_t>(options_.server) ||
            ack->backup != static_cast<uint32_t>(b.server)) {
          b.socket->drop("not an ack of this primary's range from this backup");
          continue;
        }
        on_ack(b, *ack, version);
      } catch (const DataError& e) {
        b.socket->drop(e.what());
      }
    }
    if (b.failed) continue;
    if (b.need_state) {
      if (!state_bytes) state_bytes = encode_replica(state());
      b.need_state = false;
      b.state_version = version;
      b.state_bytes = *state_bytes;
      b.pending.clear();
      b.waiting_since.reset();
      send(b, b.state_bytes, now);
    } else if (b.lagging && now - b.last_sent >= options_.resend_interval) {
      send(b, probe(version), now);
      b.waiting_since.reset();
    } else if (b.waiting_since && now - b.last_sent >= options_.resend_interval) {
      if (b.state_version) send(b, b.state_bytes, now);
      for (const Backup::Pending& p : b.pending) send(b, p.bytes, now);
    }
    check_deadline(b, now, version);
  }
}

std::optional<ReplicaState> BackupChain::fetch_from(Backup& b, std::chrono::milliseconds timeout) {
  const Deadline deadline = Deadline::after(timeout);
  ReplicaFetch ask;
  ask.primary = static_cast<uint32_t>(options_.server);
  send(b, encode_replica(ask), Clock::now());
  b.waiting_since.reset();
  while (std::optional<comm::wire::Frame> frame = b.socket->receive(deadline)) {
    try {
      ReplicaMessage m = decode_replica(frame->payload());
      if (auto* state = std::get_if<ReplicaState>(&m); state && state->primary == ask.primary) {
        logger_.info("ps server {}: backup server {} sent its copy of this range at version {}",
                     options_.server, b.server, state->version);
        return std::move(*state);
      }
      if (auto* ack = std::get_if<ReplicaAck>(&m); ack && ack->primary == ask.primary) {
        if (ack->status == ReplicaAck::Status::kTakenOver) {
          logger_.warn("ps server {}: backup server {} serves this range itself: {}",
                       options_.server, b.server, ack->error);
          taken_over_by_ = b.server;
          return std::nullopt;
        }
        logger_.warn("ps server {}: backup server {} has no copy of this range to give: {}",
                     options_.server, b.server, ack->error);
        return std::nullopt;
      }
      b.socket->drop("not an answer to this server's fetch");
    } catch (const DataError& e) {
      b.socket->drop(e.what());
    }
  }
  logger_.warn("ps server {}: backup server {} sent no copy of server {}'s range within {} ms",
               options_.server, b.server, options_.server, timeout.count());
  return std::nullopt;
}

std::optional<ReplicaState> BackupChain::fetch(std::chrono::milliseconds timeout) {
  for (auto& b : backups_) {
    if (std::optional<ReplicaState> state = fetch_from(*b, timeout)) return state;
    if (taken_over_by_) break;
  }
  return std::nullopt;
}

bool BackupChain::replicated(uint64_t version) const {
  return std::all_of(backups_.begin(), backups_.end(), [&](const auto& b) {
    return b->lagging || b->failed || (b->acked && *b->acked >= version);
  });
}

}  // namespace dtrain::ps
