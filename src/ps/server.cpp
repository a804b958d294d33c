#include "ps/server.h"

#include <algorithm>
#include <charconv>
#include <optional>
#include <set>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "core/finite.h"
#include "core/trace.h"
#include "ps/compressed_push.h"
#include "ps/consistency_state.h"
#include "ps/shard_store.h"
#include "ps/state_layout.h"

namespace dtrain::ps {

using Clock = std::chrono::steady_clock;
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
  if (o.poll_interval.count() <= 0) {
    bad("poll_interval_ms", fmt::format("{} ms; must be positive", o.poll_interval.count()));
  }
}

ServerOptions validated(ServerOptions options) {
  validate(options);
  return options;
}

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, const comm::JobAuth& auth, Logger& logger)
      : options_(validated(std::move(options))),
        auth_(auth),
        logger_(logger),
        consistency_(options_, logger_, Clock::now()) {
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
    socket_ = std::make_unique<comm::wire::FramedSocket>(
        context_, comm::wire::FramedSocket::Role::kRouter, options_.bind_endpoint, std::move(o),
        auth_, logger_);
    endpoint_ = socket_->endpoint();
    logger_.info("ps server {}: listening on {} ({}, {} workers)", options_.server, endpoint_,
                 to_string(options_.consistency), options_.num_workers);
  }

  ServeResult run(const std::stop_token& stop, Deadline deadline);
  StateDict state_dict() const;
  ServerStats stats() const;

  ServerOptions options_;
  comm::JobAuth auth_;
  Logger& logger_;
  zmq::context_t context_{1};
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  std::string endpoint_;

 private:
  struct Parked {
    std::string identity;
    uint32_t worker = 0;
    uint64_t request_id = 0;
    uint64_t min_version = 0;
    Clock::time_point until;
  };

  // A frame that passed the socket's checks: its payload decoded, then handle().
  void on_frame(const comm::wire::Frame& frame);
  void handle(const std::string& identity, uint32_t sender, Message& m);
  void send(const std::string& identity, uint32_t receiver, const Message& m);
  void serve(const std::string& identity, Message& m);
  void reply(const std::string& identity, uint32_t worker, Message m);
  void on_init(const std::string& identity, Message& m);
  void on_pull(const std::string& identity, const Message& m);
  // A reply to `m` with `status` and its error text (at the current version).
  Message status_reply(const Message& m, ReplyStatus status, std::string error) const;
  // Answers a request of a worker declared dead: kLeftOut.
  void reply_left_out(const std::string& identity, uint32_t receiver, const Message& m);
  // A compressed push: its pieces decoded into m.floats, the dense gradient
  // of this server's range (compressed_push.h); Refusal naming the worker
  // and the piece when one does not decode.
  void decode_pieces(Message& m) const;
  // A dense push (decoded pieces of a compressed one included).
  void on_push(const std::string& identity, Message& m);
  void on_pull_rows(const std::string& identity, const Message& m);
  void on_push_rows(const std::string& identity, Message& m);
  void on_set_state(const std::string& identity, const Message& m);
  // A replacement server's first init (from `worker`): its optimizer state,
  // embedding rows and version from options_.restore, its dense values from
  // the init. False (logged) when the checkpoint does not fit the init's
  // layout.
  bool restore_shard(uint32_t worker);
  // Imports a per-server state dict (split_state layout) into fresh shard
  // objects, swapped in only when all of it fits; the version becomes
  // `version`. Refusal naming what is missing.
  void import_shard(const StateDict& state, uint64_t version);
  // A push this incarnation has already taken (the same request id, or an
  // older one, from the worker's current incarnation): the client sent it
  // again after losing the connection. Answered, never applied twice.
  bool repeated_push(const Message& m) const;
  void report_version();
  SparseTable& table_for(const Message& m, size_t floats_per_key);
  bool pull_ready(uint32_t worker, uint64_t min_version) const;
  void answer_pull(const std::string& identity, uint32_t worker, uint64_t request_id);
  void serve_parked(Clock::time_point now);
  // Sync: closes the open version when it is complete and applies its update.
  void close_version();

  ConsistencyState consistency_;
  std::vector<Parked> parked_;
  bool initialised_ = false;
  ShardPlan plan_;
  std::vector<SparseTableSpec> table_specs_;
  std::optional<DenseShard> dense_;
  std::vector<SparseTable> tables_;
  ServerStats counters_;
  // Per worker: whether it sent init to this process (a replacement serves
  // only workers that did), and the request id of its last push taken.
  std::vector<bool> joined_;
  std::vector<uint64_t> last_push_id_;
  uint64_t reported_version_ = 0;
  Clock::time_point started_ = Clock::now();
};

ServeResult Server::Impl::run(const std::stop_token& stop, Deadline deadline) {
  ServeResult result;
  while (true) {
    if (stop.stop_requested()) {
      result.end = ServeEnd::kStopped;
      break;
    }
    if (deadline.expired()) {
      result.end = ServeEnd::kDeadline;
      break;
    }
    const auto wait = std::min(options_.poll_interval, deadline.remaining());
    for (int i = 0; i < kMaxFramesPerWake; ++i) {
      std::optional<comm::wire::Frame> frame =
          i == 0 ? socket_->receive(Deadline::after(wait)) : socket_->try_receive();
      if (!frame) break;
      on_frame(*frame);
      report_version();
    }
    const auto now = Clock::now();
    consistency_.check_liveness(now);
    close_version();  // a death may complete the open version
    report_version();
    serve_parked(now);
    if (consistency_.finished()) {
      result.end = ServeEnd::kFinished;
      break;
    }
  }
  for (const Parked& p : parked_) {
    Message m;
    m.kind = Kind::kReply;
    m.reply_to = Kind::kPull;
    m.status = ReplyStatus::kError;
    m.request_id = p.request_id;
    m.error = fmt::format("server {} stopped while the pull waited for version {}", options_.server,
                          p.min_version);
    reply(p.identity, p.worker, std::move(m));
  }
  parked_.clear();
  logger_.info("ps server {}: serving ended ({}) at version {}", options_.server,
               result.end == ServeEnd::kFinished  ? "all workers finished"
               : result.end == ServeEnd::kStopped ? "stop requested"
                                                  : "deadline",
               consistency_.version());
  result.stats = stats();
  return result;
}

void Server::Impl::send(const std::string& identity, uint32_t receiver, const Message& m) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = receiver;
  header.sequence = m.request_id;
  socket_->send(identity, header, encode_message(m));
}

void Server::Impl::on_frame(const comm::wire::Frame& frame) {
  Message m;
  try {
    m = decode_message(frame.payload());
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

void Server::Impl::reply(const std::string& identity, uint32_t worker, Message m) {
  m.kind = Kind::kReply;
  m.worker = static_cast<uint32_t>(options_.server);
  send(identity, worker_rank(options_.num_servers, static_cast<int>(worker)), m);
}

void Server::Impl::on_init(const std::string& identity, Message& m) {
  std::vector<DenseSpec> specs = m.dense;
  ShardPlan plan(std::move(specs), options_.num_servers);  // UsageError on bad specs
  std::set<std::string> names;
  for (const SparseTableSpec& t : m.tables) {
    if (t.name.empty() || !names.insert(t.name).second) {
      throw Refusal(fmt::format("table name '{}' is empty or repeated", t.name));
    }
  }
  const int64_t expected = plan.range_numel(options_.server);
  if (static_cast<int64_t>(m.floats.size()) != expected) {
    throw Refusal(fmt::format("init carries {} values; server {} holds [{}, {}) = {} floats",
                              m.floats.size(), options_.server, plan.range_begin(options_.server),
                              plan.range_end(options_.server), expected));
  }
  if (initialised_) {
    const auto& have = plan_.tensors();
    if (have.size() != plan.tensors().size()) {
      throw Refusal(fmt::format("init lists {} dense tensors; the job was initialised with {}",
                                plan.tensors().size(), have.size()));
    }
    for (size_t i = 0; i < have.size(); ++i) {
      const DenseSpec& got = plan.tensors()[i];
      if (got.name != have[i].name || got.shape != have[i].shape) {
        throw Refusal(
            fmt::format("dense tensor {} is '{}' {}; the job was initialised with '{}' {}", i,
                        got.name, shape_str(got.shape), have[i].name, shape_str(have[i].shape)));
      }
    }
    if (m.tables.size() != table_specs_.size()) {
      throw Refusal(fmt::format("init lists {} tables; the job was initialised with {}",
                                m.tables.size(), table_specs_.size()));
    }
    for (size_t i = 0; i < table_specs_.size(); ++i) {
      if (m.tables[i].name != table_specs_[i].name || m.tables[i].dim != table_specs_[i].dim) {
        throw Refusal(fmt::format(
            "table {} is '{}' dim {}; the job was initialised with '{}' dim {}", i,
            m.tables[i].name, m.tables[i].dim, table_specs_[i].name, table_specs_[i].dim));
      }
    }
  } else {
    plan_ = std::move(plan);
    table_specs_ = m.tables;
    dense_.emplace(m.floats, options_.optimizer);
    for (size_t i = 0; i < table_specs_.size(); ++i) {
      tables_.emplace_back(table_specs_[i], static_cast<uint32_t>(i), options_.seed,
                           options_.optimizer);
    }
    initialised_ = true;
    if (!options_.replacement) {
      logger_.info(
          "ps server {}: initialised by worker {}: {} dense tensors, {} floats here, {} tables",
          options_.server, m.worker, plan_.tensors().size(), expected, tables_.size());
    } else if (!options_.restore || !restore_shard(m.worker)) {
      logger_.warn(
          "ps server {}: replacement serving {:.3f} s after its start with worker {}'s last "
          "pulled parameters and fresh optimizer state (no checkpoint restored)",
          options_.server, std::chrono::duration<double>(Clock::now() - started_).count(),
          m.worker);
    }
  }
  if (options_.replacement) {
    consistency_.follow(m.version, fmt::format("worker {}'s init", m.worker));
  }
  consistency_.join(m.worker);
  joined_[m.worker] = true;
  last_push_id_[m.worker] = 0;
  Message r;
  r.reply_to = Kind::kInit;
  r.request_id = m.request_id;
  r.version = consistency_.version();
  r.clock = options_.consistency == Consistency::kSync ? consistency_.version()
                                                       : consistency_.clock(m.worker);
  reply(identity, m.worker, std::move(r));
}

bool Server::Impl::restore_shard(uint32_t worker) {
  const ServerRestore& source = *options_.restore;
  std::vector<std::string> names;
  for (const DenseSpec& spec : plan_.tensors()) names.push_back(spec.name);
  try {
    const PsState state = state_from_checkpoint(source.model, source.optimizer, names, 0);
    const std::vector<StateDict> parts = split_state(plan_, table_specs_, state);
    const StateDict& part = parts[static_cast<size_t>(options_.server)];
    // The dense values come from the init (the worker's last pulled copy,
    // newer than any checkpoint); the checkpoint gives the rest.
    const Tensor& values = part.at("dense.values");
    const std::span<const float> pulled = dense_->values();
    if (values.numel() != static_cast<int64_t>(pulled.size())) {
      throw Refusal(fmt::format("the checkpoint holds {} dense floats for this server, the init {}",
                                values.numel(), pulled.size()));
    }
    std::copy(pulled.begin(), pulled.end(), values.data());
    import_shard(part, state.version);
    logger_.warn(
        "ps server {}: replacement restored its shard from {} (version {}; dense values "
        "from worker {}'s last pulled copy, optimizer state and embedding rows from the "
        "checkpoint) and serves {:.3f} s after its start",
        options_.server, source.origin, state.version, worker,
        std::chrono::duration<double>(Clock::now() - started_).count());
    return true;
  } catch (const std::exception& e) {
    logger_.error("ps server {}: cannot restore from {}: {}", options_.server, source.origin,
                  e.what());
    return false;
  }
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
  return initialised_ && consistency_.pull_ready(worker, min_version);
}

void Server::Impl::answer_pull(const std::string& identity, uint32_t worker, uint64_t request_id) {
  Message r;
  r.reply_to = Kind::kPull;
  r.request_id = request_id;
  r.version = consistency_.version();
  r.min_clock = consistency_.min_live_clock();
  r.totals = consistency_.last_totals();
  r.float_parts = {std::as_bytes(dense_->values())};  // encoded by reply(), no copy before
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
      answer_pull(p.identity, p.worker, p.request_id);
    } else if (now >= p.until) {
      Message r;
      r.reply_to = Kind::kPull;
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

namespace {

// Refuses an update holding NaN or Inf from anyone: one such value would
// poison every parameter it touches. (A non-finite learning rate does not
// decode at all: decode_message.)
void check_finite_update(const Message& m) {
  if (m.floats_finite) return;  // decode_message checked them
  const size_t i = dtrain::first_non_finite(m.floats).value_or(0);
  throw Refusal(fmt::format("{} from worker {}: value {} of {} is {}; nothing applied",
                            to_string(m.kind), m.worker, i, m.floats.size(), m.floats[i]));
}

}  // namespace

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

void Server::Impl::on_push(const std::string& identity, Message& m) {
  if (!initialised_) throw Refusal("push before init: the server holds no parameters yet");
  check_finite_update(m);
  if (static_cast<int64_t>(m.floats.size()) != dense_->numel()) {
    throw Refusal(fmt::format("gradient has {} floats; server {} holds {} (range [{}, {}))",
                              m.floats.size(), options_.server, dense_->numel(),
                              plan_.range_begin(options_.server),
                              plan_.range_end(options_.server)));
  }
  Message r;
  r.reply_to = m.kind;
  r.request_id = m.request_id;
  if (repeated_push(m)) {
    r.version = consistency_.version();
    reply(identity, m.worker, std::move(r));
    return;
  }
  if (options_.replacement && options_.consistency == Consistency::kSync) {
    consistency_.follow(m.version, fmt::format("worker {}'s push", m.worker));
  }
  const Admission admission = consistency_.admit_push(m.worker, m);
  last_push_id_[m.worker] = m.request_id;
  if (admission == Admission::kApplyNow && m.samples > 0) dense_->apply(m.floats, m.lr);
  if (admission == Admission::kDropped) r.status = ReplyStatus::kDropped;
  r.version = consistency_.version();
  reply(identity, m.worker, std::move(r));
  close_version();
}

void Server::Impl::close_version() {
  if (!initialised_) return;
  std::optional<VersionUpdate> update = consistency_.close_version();
  if (!update || !update->apply) return;
  dense_->apply(update->grad, update->lr);
  for (const VersionUpdate::Rows& rows : update->rows) {
    tables_[rows.table].apply(rows.keys, rows.grads, update->lr);
  }
}

SparseTable& Server::Impl::table_for(const Message& m, size_t floats_per_key) {
  if (!initialised_) {
    throw Refusal(fmt::format("{} before init: the server knows no tables yet", to_string(m.kind)));
  }
  if (m.table >= tables_.size()) {
    throw Refusal(fmt::format("unknown table {}; the job has {} tables", m.table, tables_.size()));
  }
  SparseTable& table = tables_[m.table];
  const size_t dim = static_cast<size_t>(table.spec().dim);
  if (m.floats.size() != m.keys.size() * floats_per_key * dim) {
    throw Refusal(fmt::format("table '{}': {} floats for {} keys of dim {}", table.spec().name,
                              m.floats.size(), m.keys.size(), dim));
  }
  for (uint64_t key : m.keys) {
    const int owner = sparse_server_of(m.table, key, options_.num_servers);
    if (owner != options_.server) {
      throw Refusal(fmt::format("table '{}': key {} belongs to server {}, not {}",
                                table.spec().name, key, owner, options_.server));
    }
  }
  return table;
}

void Server::Impl::on_pull_rows(const std::string& identity, const Message& m) {
  SparseTable& table = table_for(m, 0);
  Message r;
  r.reply_to = Kind::kPullRows;
  r.request_id = m.request_id;
  r.version = consistency_.version();
  r.floats.resize(m.keys.size() * static_cast<size_t>(table.spec().dim));
  table.read_rows(m.keys, r.floats);
  reply(identity, m.worker, std::move(r));
}

void Server::Impl::on_push_rows(const std::string& identity, Message& m) {
  SparseTable& table = table_for(m, 1);
  check_finite_update(m);
  Message r;
  r.reply_to = Kind::kPushRows;
  r.request_id = m.request_id;
  if (repeated_push(m)) {
    r.version = consistency_.version();
    reply(identity, m.worker, std::move(r));
    return;
  }
  if (options_.replacement && options_.consistency == Consistency::kSync) {
    consistency_.follow(m.version, fmt::format("worker {}'s row push", m.worker));
  }
  const Admission admission = consistency_.admit_rows(m.worker, m);
  last_push_id_[m.worker] = m.request_id;
  if (admission == Admission::kApplyNow) table.apply(m.keys, m.floats, m.lr);
  if (admission == Admission::kDropped) r.status = ReplyStatus::kDropped;
  r.version = consistency_.version();
  reply(identity, m.worker, std::move(r));
}

void Server::Impl::on_set_state(const std::string& identity, const Message& m) {
  if (!initialised_) throw Refusal("set_state before init: the dense layout is not known yet");
  const auto& meta = m.state.metadata();
  auto it = meta.find("version");
  uint64_t version = 0;
  if (it == meta.end() ||
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), version).ec !=
          std::errc()) {
    throw Refusal("set_state: metadata 'version' is missing or not a number");
  }
  import_shard(m.state, version);
  logger_.info("ps server {}: state loaded by worker {}; version {}", options_.server, m.worker,
               version);
  Message r;
  r.reply_to = Kind::kSetState;
  r.request_id = m.request_id;
  r.version = version;
  reply(identity, m.worker, std::move(r));
}

void Server::Impl::import_shard(const StateDict& state, uint64_t version) {
  if (!state.contains("dense.values")) throw Refusal("set_state: 'dense.values' is missing");
  // Import into fresh objects; swap only when everything fits.
  DenseShard dense(dense_->values(), options_.optimizer);
  dense.import_state(state);
  std::vector<SparseTable> tables;
  for (size_t i = 0; i < table_specs_.size(); ++i) {
    tables.emplace_back(table_specs_[i], static_cast<uint32_t>(i), options_.seed,
                        options_.optimizer);
    if (!state.contains("sparse." + table_specs_[i].name + ".keys")) {
      throw Refusal(fmt::format("set_state: table '{}' is missing", table_specs_[i].name));
    }
    tables.back().import_state(state);
  }
  dense_.emplace(std::move(dense));
  tables_ = std::move(tables);
  consistency_.reset(version);
}

StateDict Server::Impl::state_dict() const {
  StateDict out;
  out.metadata()["version"] = std::to_string(consistency_.version());
  if (!initialised_) return out;
  dense_->export_state(out);
  for (const SparseTable& t : tables_) t.export_state(out);
  return out;
}

ServerStats Server::Impl::stats() const {
  ServerStats s = counters_;
  s.frames_dropped = socket_->dropped();
  s.server = options_.server;
  s.initialised = initialised_;
  consistency_.fill(s);
  s.parked_pulls = parked_.size();
  s.sparse_rows = 0;
  for (const SparseTable& t : tables_) s.sparse_rows += t.rows();
  return s;
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
