#include "ps/server.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "core/finite.h"
#include "core/trace.h"
#include "ps/compressed_push.h"
#include "ps/consistency_state.h"
#include "ps/server_impl.h"
#include "ps/shard_store.h"
#include "ps/state_layout.h"

namespace dtrain::ps {

using std::chrono::milliseconds;

std::string_view to_string(Consistency consistency) {
  switch (consistency) {
    case Consistency::kSync:
      return "sync";
    case Consistency::kAsync:
      return "async";
    case Consistency::kSsp:
      return "ssp";
  }
  return "unknown";
}

Consistency parse_consistency(std::string_view text) {
  if (text == "sync") return Consistency::kSync;
  if (text == "async") return Consistency::kAsync;
  if (text == "ssp") return Consistency::kSsp;
  throw ConfigError(
      fmt::format("ps consistency '{}' is unknown; expected sync, async or ssp", text));
}

namespace {

constexpr int kMaxFramesPerWake = 256;

void validate(const ServerOptions& o) {
  auto bad = [](const std::string& key, const std::string& problem) {
    throw ConfigError(fmt::format("ps server option '{}': {}", key, problem));
  };
  if (o.num_servers < 1) bad("servers", fmt::format("{} servers; need at least 1", o.num_servers));
  if (o.num_workers < 1) bad("workers", fmt::format("{} workers; need at least 1", o.num_workers));
  if (o.server < 0 || o.server >= o.num_servers) {
    bad("server", fmt::format("server index {} out of range [0, {})", o.server, o.num_servers));
  }
  if (o.backup_workers < 0 || o.backup_workers >= o.num_workers) {
    bad("backup_workers", fmt::format("{} backup workers with {} workers; need 0 <= b < N",
                                      o.backup_workers, o.num_workers));
  }
  if (o.staleness_bound < 0)
    bad("staleness", fmt::format("bound {} is negative", o.staleness_bound));
  if (o.heartbeat_timeout.count() <= 0) {
    bad("heartbeat_timeout_ms",
        fmt::format("{} ms; must be positive", o.heartbeat_timeout.count()));
  }
  if (o.join_timeout.count() < 0) {
    bad("join_timeout_ms", fmt::format("{} ms; must not be negative", o.join_timeout.count()));
  }
  if (o.replicas < 0 || (o.replicas > 0 && o.replicas >= o.num_servers)) {
    bad("replicas",
        fmt::format("{} replicas with {} servers; need 0 <= R < S", o.replicas, o.num_servers));
  }
  if (o.replicas > 0 && o.consistency != Consistency::kSync) {
    bad("replicas",
        fmt::format("replication needs consistency sync, not {}", to_string(o.consistency)));
  }
  if (o.replicas > 0 && o.replica_timeout.count() <= 0) {
    bad("replica_timeout_ms", fmt::format("{} ms; must be positive", o.replica_timeout.count()));
  }
  if (o.poll_interval.count() <= 0) {
    bad("poll_interval_ms", fmt::format("{} ms; must be positive", o.poll_interval.count()));
  }
}

ServerOptions validated(ServerOptions options) {
  validate(options);
  return options;
}

}  // namespace

Server::Impl::Impl(ServerOptions options, const comm::JobAuth& auth, Logger& logger)
    : options_(validated(std::move(options))),
      auth_(auth),
      logger_(logger),
      context_(options_.context != nullptr ? *options_.context : own_context_.emplace(1)),
      consistency_(options_, logger_, Clock::now()),
      replica_store_(options_.server, options_.seed, options_.optimizer) {
  joined_.assign(static_cast<size_t>(options_.num_workers), false);
  last_push_id_.assign(static_cast<size_t>(options_.num_workers), 0);
  reported_version_ = consistency_.version();
  // Build the optimizer once to reject a bad [optimizer] table now, not at init.
  optim::make_update_rule(options_.optimizer, {Shape{1}});
  comm::wire::FramedSocketOptions o;
  o.name = fmt::format("ps server {}", options_.server);
  o.peer = options_.server;
  o.rank = server_rank(options_.server);
  o.limits.job_id = auth_.job_id();
  o.limits.world_size = comm::wire::kAnyReceiver;  // worker ranks are checked here, with a reply
  o.limits.receiver = server_rank(options_.server);
  o.limits.max_payload_bytes = options_.max_payload_bytes;
  o.accepted = {comm::wire::MessageType::kData};
  o.unbounded_queues = true;
  o.link = options_.link;
  o.private_ipc = options_.private_ipc;
  o.also_bind = options_.inproc_endpoint;
  socket_ = std::make_unique<comm::wire::FramedSocket>(
      context_, comm::wire::FramedSocket::Role::kRouter, options_.bind_endpoint, std::move(o),
      auth_, logger_);
  endpoint_ = socket_->endpoint();
  logger_.info("ps server {}: listening on {} ({}, {} workers)", options_.server, endpoint_,
               to_string(options_.consistency), options_.num_workers);
}

ServeResult Server::Impl::run(const std::stop_token& stop, Deadline deadline) {
  ServeResult result;
  if (!begin_serving(deadline)) {
    result.end = ServeEnd::kFinished;
    result.stats = stats();
    return result;
  }
  while (true) {
    if (stop.stop_requested()) {
      result.end = ServeEnd::kStopped;
      break;
    }
    if (deadline.expired()) {
      result.end = ServeEnd::kDeadline;
      break;
    }
    wait_for_frames(std::min(options_.poll_interval, deadline.remaining()));
    for (int i = 0; i < kMaxFramesPerWake; ++i) {
      std::optional<comm::wire::Frame> frame = socket_->try_receive();
      if (!frame) break;
      on_frame(*frame);
      report_version();
    }
    const auto now = Clock::now();
    service_backups(now);
    consistency_.check_liveness(now);
    close_version();  // a death may complete the open version
    report_version();
    serve_parked(now);
    flush_push_replies([&](const DeferredReply& d) { return !pull_parked(d.identity); });
    if (consistency_.finished()) {
      result.end = ServeEnd::kFinished;
      break;
    }
    if (retire_fenced()) {
      result.end = ServeEnd::kFinished;
      break;
    }
    if (abandoned(now)) {
      result.end = ServeEnd::kAbandoned;
      break;
    }
  }
  for (const Parked& p : parked_) {
    Message m;
    m.kind = Kind::kReply;
    m.reply_to = p.reply_to;
    m.status = ReplyStatus::kError;
    m.request_id = p.request_id;
    m.error = fmt::format("server {} stopped while the pull waited for version {}", options_.server,
                          p.min_version);
    reply(p.identity, p.worker, std::move(m));
  }
  parked_.clear();
  flush_push_replies([](const DeferredReply&) { return true; });
  end_serving(result.end);
  logger_.info("ps server {}: serving ended ({}) at version {}", options_.server,
               result.end == ServeEnd::kFinished    ? "all workers finished"
               : result.end == ServeEnd::kStopped   ? "stop requested"
               : result.end == ServeEnd::kAbandoned ? "no live worker"
                                                    : "deadline",
               consistency_.version());
  result.stats = stats();
  return result;
}

bool Server::Impl::abandoned(Clock::time_point now) {
  if (consistency_.live_workers() > 0) {
    no_live_worker_since_.reset();
    return false;
  }
  if (!no_live_worker_since_) no_live_worker_since_ = now;
  const auto limit = options_.rejoin_window();
  if (now - *no_live_worker_since_ <= limit) return false;
  logger_.error(
      "ps server {}: every worker has been dead for more than {} ms (none finished, none "
      "rejoined) at version {}: nobody is left to serve; stopping",
      options_.server, limit.count(), consistency_.version());
  return true;
}

void Server::Impl::on_frame(comm::wire::Frame& frame) {
  if (is_replication_payload(frame.payload())) {
    on_replica_frame(frame);
    return;
  }
  // A dense push's gradient stays in the received message (no copy): sync
  // sums straight from it when the version closes, async applies from it.
  // The message moves first: a small one keeps its bytes inside the object.
  auto body = std::make_shared<zmq::message_t>(std::move(frame.body));
  const std::span<const std::byte> payload(static_cast<const std::byte*>(body->data()),
                                           body->size());
  Message m;
  try {
    m = decode_message(payload, FloatDecoding::kView);
    m.payload_owner = std::move(body);
    check_sequence(frame.header.sequence, m);
  } catch (const DataError& e) {
    socket_->drop(fmt::format("from rank {}: {}", frame.header.sender, e.what()));
    return;
  }
  handle(frame.identity, frame.header.sender, m);
}

void Server::Impl::handle(const std::string& identity, uint32_t sender, Message& m) {
  if (m.kind == Kind::kReply) {
    socket_->drop(fmt::format("a reply from rank {} (servers take only requests)", sender));
    return;
  }
  const uint32_t receiver = sender;
  auto refuse = [&](const std::string& why) {
    ++counters_.requests_rejected;
    logger_.warn("ps server {}: rejected {} from worker {}: {}", options_.server, to_string(m.kind),
                 m.worker, why);
    if (m.kind == Kind::kHeartbeat) return;
    send(identity, receiver, status_reply(m, ReplyStatus::kError, why));
  };
  if (m.worker >= static_cast<uint32_t>(options_.num_workers)) {
    refuse(fmt::format("worker index {} out of range [0, {})", m.worker, options_.num_workers));
    return;
  }
  if (sender != worker_rank(options_.num_servers, static_cast<int>(m.worker))) {
    refuse(fmt::format("frame from wire rank {} claims to be worker {} (rank {})", sender, m.worker,
                       worker_rank(options_.num_servers, static_cast<int>(m.worker))));
    return;
  }
  if (fenced(identity, receiver, m)) return;
  const WorkerState state = consistency_.state(m.worker);
  if (state != WorkerState::kLive && m.kind != Kind::kInit) {
    if (m.kind == Kind::kHeartbeat) return;  // a late heartbeat of a finished or dead worker
    if (state == WorkerState::kDead && m.kind != Kind::kGoodbye) {
      reply_left_out(identity, receiver, m);
      return;
    }
    refuse(fmt::format("worker {} is {}; send init to rejoin", m.worker, to_string(state)));
    return;
  }
  consistency_.heard(m.worker, Clock::now());
  if (options_.replacement && !joined_[m.worker] && m.kind != Kind::kInit &&
      m.kind != Kind::kHeartbeat && m.kind != Kind::kStats && m.kind != Kind::kGoodbye) {
    // Its predecessor knew this worker; this process does not yet. Nothing
    // changes: the client re-joins and asks again.
    reply(identity, m.worker,
          status_reply(m, ReplyStatus::kRejoin,
                       fmt::format("server {} was replaced and has not had worker {}'s init yet",
                                   options_.server, m.worker)));
    return;
  }
  try {
    serve(identity, m);
  } catch (const Refusal& e) {
    refuse(e.what());
  } catch (const Error& e) {
    // Validation inside the optimizer or the shard plan (UsageError), or a
    // bug (InternalError): refused all the same, the server carries on.
    refuse(e.what());
  }
}

void Server::Impl::reply_left_out(const std::string& identity, uint32_t receiver,
                                  const Message& m) {
  // A worker that was stopped past the heartbeat timeout and woke up: the
  // job went on without it; it learns so instead of an error.
  ++counters_.requests_rejected;
  logger_.warn(
      "ps server {}: worker {}, declared dead earlier, is back ({}); told it the job "
      "goes on without it",
      options_.server, m.worker, to_string(m.kind));
  send(identity, receiver,
       status_reply(m, ReplyStatus::kLeftOut,
                    fmt::format("ps server {} declared worker {} dead (silent for more than the "
                                "heartbeat timeout of {} ms) and the job went on without it; it "
                                "is at version {}",
                                options_.server, m.worker, options_.heartbeat_timeout.count(),
                                consistency_.version())));
}

Message Server::Impl::status_reply(const Message& m, ReplyStatus status, std::string error) const {
  Message r;
  r.kind = Kind::kReply;
  r.reply_to = m.kind;
  r.status = status;
  r.request_id = m.request_id;
  r.version = consistency_.version();
  r.term = term_;
  r.error = std::move(error);
  return r;
}

void Server::Impl::serve(const std::string& identity, Message& m) {
  Message r;
  r.kind = Kind::kReply;
  r.reply_to = m.kind;
  r.request_id = m.request_id;
  switch (m.kind) {
    case Kind::kHeartbeat:
      return;
    case Kind::kInit:
      on_init(identity, m);
      return;
    case Kind::kPull:
      on_pull(identity, m);
      return;
    case Kind::kPushCompressed:
      decode_pieces(m);
      on_push(identity, m);
      return;
    case Kind::kPush:
      on_push(identity, m);
      return;
    case Kind::kPullRows:
      on_pull_rows(identity, m);
      return;
    case Kind::kPushRows:
      on_push_rows(identity, m);
      return;
    case Kind::kStats:
      r.stats = stats();
      r.stats.clock_us = trace_now_us();
      break;
    case Kind::kGetState:
      if (!initialised_) throw Refusal("get_state before init: the server holds no parameters yet");
      r.state = state_dict();
      break;
    case Kind::kSetState:
      on_set_state(identity, m);
      return;
    case Kind::kGoodbye:
      consistency_.finish(m.worker);
      close_version();
      break;
    case Kind::kReply:
      return;
  }
  r.version = consistency_.version();
  reply(identity, m.worker, std::move(r));
}

bool Server::Impl::repeated_push(const Message& m) const {
  return m.request_id <= last_push_id_[m.worker];
}

void Server::Impl::report_version() {
  const uint64_t version = consistency_.version();
  if (version == reported_version_) return;
  reported_version_ = version;
  if (options_.on_version) options_.on_version(version);
}

bool Server::Impl::pull_ready(uint32_t worker, uint64_t min_version) const {
  // With backups, nothing is served that a backup in step does not hold.
  return initialised_ && consistency_.pull_ready(worker, min_version) &&
         (!backups_ || backups_->replicated(consistency_.version()));
}

void Server::Impl::answer_pull(const std::string& identity, uint32_t worker, uint64_t request_id,
                               Kind reply_to, ReplyStatus status,
                               const std::vector<Message>& prefetch) {
  Message r;
  r.reply_to = reply_to;
  r.status = status;
  r.with_pull = reply_to == Kind::kPush;
  r.request_id = request_id;
  r.version = consistency_.version();
  r.min_clock = consistency_.min_live_clock();
  r.totals = consistency_.last_totals();
  if (ShmSegment* segment = shm_segment(worker)) {
    // Straight into the worker's segment: the reply's one copy on this side.
    r.shm = write_floats(*segment, ShmSegment::Region::kPull, {std::as_bytes(dense_->values())});
  } else {
    r.float_parts = {std::as_bytes(dense_->values())};  // encoded by reply(), no copy before
  }
  for (const Message& rows : prefetch) r.prefetch.push_back(row_reply(rows));
  reply(identity, worker, std::move(r));
}

void Server::Impl::on_pull(const std::string& identity, const Message& m) {
  if (pull_ready(m.worker, m.min_version)) {
    answer_pull(identity, m.worker, m.request_id);
    return;
  }
  parked_.push_back(Parked{identity, m.worker, m.request_id, m.min_version,
                           Clock::now() + milliseconds(m.wait_ms)});
}

void Server::Impl::serve_parked(Clock::time_point now) {
  for (size_t i = 0; i < parked_.size();) {
    const Parked& p = parked_[i];
    if (pull_ready(p.worker, p.min_version)) {
      answer_pull(p.identity, p.worker, p.request_id, p.reply_to, p.status, p.prefetch);
    } else if (now >= p.until) {
      Message r;
      r.reply_to = p.reply_to;
      r.status = ReplyStatus::kTimeout;
      r.request_id = p.request_id;
      const uint64_t version = consistency_.version();
      r.version = version;
      r.error =
          !initialised_ ? std::string("no worker has sent init yet")
          : version < p.min_version
              ? fmt::format("version is {}, waiting for {}", version, p.min_version)
              : fmt::format("staleness bound {}: this worker's clock is {}, slowest live is {}",
                            options_.staleness_bound, consistency_.clock(p.worker),
                            consistency_.min_live_clock());
      reply(p.identity, p.worker, std::move(r));
    } else {
      ++i;
      continue;
    }
    parked_.erase(parked_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void Server::Impl::decode_pieces(Message& m) const {
  if (!initialised_) throw Refusal("push before init: the server holds no parameters yet");
  try {
    m.floats = decode_push(plan_, options_.server, m.pieces, m.worker);
  } catch (const DataError& e) {
    throw Refusal(e.what());
  }
  m.pieces.clear();
  m.floats_finite = all_finite(m.floats);
}

void Server::Impl::close_version() {
  if (!initialised_) return;
  const uint64_t base_version = consistency_.version();
  std::optional<VersionUpdate> update = consistency_.close_version();
  if (!update) return;
  if (update->apply) {
    dense_->apply(update->grad, update->lr);
    if (backups_) backups_->record_dense(update->grad, update->lr);
    for (const VersionUpdate::Rows& rows : update->rows) {
      tables_[rows.table].apply(rows.keys, rows.grads, update->lr);
      if (backups_) backups_->record_rows(rows.table, rows.keys, rows.grads, update->lr);
    }
  }
  if (backups_) backups_->ship(base_version, consistency_.version());
}

Server::Server(ServerOptions options, const comm::JobAuth& auth, Logger& logger)
    : impl_(std::make_unique<Impl>(std::move(options), auth, logger)) {}
Server::~Server() = default;
const std::string& Server::endpoint() const { return impl_->endpoint_; }
const ServerOptions& Server::options() const { return impl_->options_; }
ServeResult Server::run(std::stop_token stop, Deadline deadline) {
  return impl_->run(stop, deadline);
}
StateDict Server::state_dict() const { return impl_->state_dict(); }
ServerStats Server::stats() const { return impl_->stats(); }

}  // namespace dtrain::ps
