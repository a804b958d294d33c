// Server::Impl's replication hooks (replication.h, replica_store.h): the
// serving loop's wait on the socket and the backups' acks, the frames other
// servers send to this one's ReplicaStore, and the state this server's
// backups catch up from.
#include <fmt/format.h>

#include <utility>
#include <variant>

#include "core/error.h"
#include "ps/server_impl.h"

namespace dtrain::ps {

void Server::Impl::set_server_endpoints(std::vector<std::string> endpoints) {
  if (endpoints.size() != static_cast<size_t>(options_.num_servers)) {
    throw UsageError(fmt::format("ps server {}: {} server endpoints for {} servers",
                                 options_.server, endpoints.size(), options_.num_servers));
  }
  if (options_.replicas == 0 || backups_) return;
  BackupChainOptions o;
  o.server = options_.server;
  o.num_servers = options_.num_servers;
  o.replicas = options_.replicas;
  o.server_endpoints = std::move(endpoints);
  o.timeout = options_.replica_timeout;
  o.resend_interval = options_.replica_resend_interval;
  o.max_payload_bytes = options_.max_payload_bytes;
  o.private_ipc = options_.private_ipc;
  backups_ = std::make_unique<BackupChain>(context_, std::move(o), auth_, logger_);
  if (initialised_) backups_->invalidate();
}

void Server::Impl::wait_for_frames(std::chrono::milliseconds wait) {
  std::vector<zmq::pollitem_t> items{socket_->poll_item()};
  if (backups_) backups_->add_poll_items(items);
  comm::wire::poll_until(items, Deadline::after(wait));
}

void Server::Impl::service_backups(Clock::time_point now) {
  if (!backups_ && options_.replicas > 0) {
    throw UsageError(
        fmt::format("ps server {}: {} replicas but no server endpoints; call "
                    "set_server_endpoints() before run()",
                    options_.server, options_.replicas));
  }
  if (!backups_ || !initialised_) return;
  backups_->service(now, consistency_.version(), [this] { return replica_state(); });
  if (const std::optional<BackupChain::Superseded> s = backups_->superseded()) {
    fence(s->term, fmt::format("backup server {}'s replica ack", s->backup));
  }
}

ReplicaState Server::Impl::replica_state() const {
  ReplicaState state;
  state.primary = static_cast<uint32_t>(options_.server);
  state.version = consistency_.version();
  state.tables = table_specs_;
  state.state = state_dict();
  return state;
}

void Server::Impl::on_replica_frame(const comm::wire::Frame& frame) {
  const uint32_t sender = frame.header.sender;
  ReplicaMessage m;
  try {
    m = decode_replica(frame.payload());
  } catch (const DataError& e) {
    socket_->drop(fmt::format("from rank {}: {}", sender, e.what()));
    return;
  }
  if (auto* ask = std::get_if<ReplicaTakeover>(&m)) {
    on_takeover(frame, *ask);  // from a worker
    return;
  }
  if (sender >= static_cast<uint32_t>(options_.num_servers) ||
      !backs_up(options_.server, static_cast<int>(sender), options_.num_servers,
                options_.replicas)) {
    socket_->drop(fmt::format("a replica frame from rank {}, which server {} does not back up",
                              sender, options_.server));
    return;
  }
  ReplicaAck ack;
  if (auto* update = std::get_if<ReplicaUpdate>(&m); update && update->primary == sender) {
    ack = replica_store_.apply(*update);
  } else if (auto* state = std::get_if<ReplicaState>(&m); state && state->primary == sender) {
    ack = replica_store_.load(*state);
    if (ack.status == ReplicaAck::Status::kOk) {
      logger_.info("ps server {}: holds server {}'s state from version {}", options_.server, sender,
                   state->version);
    }
  } else if (auto* fetch = std::get_if<ReplicaFetch>(&m); fetch && fetch->primary == sender) {
    answer_fetch(frame.identity, sender);
    return;
  } else {
    socket_->drop(fmt::format("from server {}: not an update or state of its own range", sender));
    return;
  }
  if (ack.status == ReplicaAck::Status::kError) {
    logger_.error("ps server {}: server {}'s replica: {}", options_.server, sender, ack.error);
  }
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = sender;
  socket_->send(frame.identity, header, encode_replica(ack));
}

void Server::Impl::answer_fetch(const std::string& identity, uint32_t primary) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = primary;
  ReplicaAck none;
  none.backup = static_cast<uint32_t>(options_.server);
  none.primary = primary;
  if (const std::optional<std::string> acting = acting_endpoint(primary)) {
    none.status = ReplicaAck::Status::kTakenOver;
    none.term = replica_store_.term(primary);
    none.error = fmt::format("server {} took server {}'s range over and serves it on {}",
                             options_.server, primary, *acting);
    socket_->send(identity, header, encode_replica(none));
    return;
  }
  if (std::optional<ReplicaState> state = replica_store_.state(primary)) {
    copy_given_.insert(primary);  // the replacement serves it: never taken over now
    logger_.info(
        "ps server {}: gave its copy of server {}'s range (version {}) to server {}'s "
        "replacement",
        options_.server, primary, state->version, primary);
    socket_->send(identity, header, encode_replica(*state));
    return;
  }
  none.status = ReplicaAck::Status::kNeedState;
  none.error =
      fmt::format("server {} holds no copy of server {}'s range", options_.server, primary);
  socket_->send(identity, header, encode_replica(none));
}

// A replacement's fetch comes before it serves, and a takeover request comes
// only after the client saw the primary's connection break; whichever this
// backup answers first decides: it either gave its copy (copy_given_) or
// serves the range itself (acting_), never both.
void Server::Impl::inherit_from_backup() {
  if (!options_.replacement || !backups_ || inherited_ || initialised_) return;
  inherited_ = backups_->fetch(options_.replica_timeout);
}

bool Server::Impl::take_inherited(uint32_t worker) {
  try {
    import_shard(inherited_->state, inherited_->version);
  } catch (const std::exception& e) {  // Refusal or the shard's UsageError
    logger_.error("ps server {}: the backup's copy does not fit worker {}'s init: {}",
                  options_.server, worker, e.what());
    return false;
  }
  const double after_s = std::chrono::duration<double>(Clock::now() - started_).count();
  if (acting_host_) {
    logger_.warn(
        "ps server {} (acting, on server {}): imported server {}'s copy at worker {}'s init "
        "(version {}: values, optimizer buffers and sparse rows) and serves {:.3f} s after the "
        "takeover",
        options_.server, *acting_host_, *acting_host_, worker, inherited_->version, after_s);
    return true;
  }
  logger_.warn(
      "ps server {}: replacement took its shard from its backup's copy (version {}: values, "
      "optimizer buffers and sparse rows; no checkpoint read) and serves {:.3f} s after its "
      "start",
      options_.server, inherited_->version, after_s);
  return true;
}

StateDict Server::Impl::replica_state_dict(int primary) const {
  return replica_store_.state_dict(static_cast<uint32_t>(primary));
}

void Server::set_server_endpoints(std::vector<std::string> endpoints) {
  impl_->set_server_endpoints(std::move(endpoints));
}
StateDict Server::replica_state_dict(int primary) const {
  return impl_->replica_state_dict(primary);
}

}  // namespace dtrain::ps
