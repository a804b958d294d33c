#include "fl/fl_server.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "fl/fl_protocol.h"
#include "fl/sampling.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"
#include "fl/upload_codec.h"

namespace dtrain::fl {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often a waiting server looks at its stop token.
constexpr milliseconds kStopPoll{100};

void validate(const FlServerOptions& o) {
  const FlConfig& c = o.config;
  if (c.min_fit_clients > c.clients_per_round()) {
    throw ConfigError(fmt::format(
        "fl.min_fit_clients {} is more than the {} clients a round samples (fl.fraction {} of "
        "fl.clients {})",
        c.min_fit_clients, c.clients_per_round(), c.fraction, c.clients));
  }
  if (o.max_round_attempts < 1) {
    throw UsageError(fmt::format("fl server: max_round_attempts {} < 1", o.max_round_attempts));
  }
  if (!o.resume && o.initial_weights.empty()) {
    throw UsageError("fl server: no initial weights and no state to resume");
  }
}

// The seed of the draw of a repeated round: attempt 0 is the job's seed, so
// a round that closes at once samples what the simulation would.
uint64_t attempt_seed(uint64_t seed, int attempt) {
  return seed + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(attempt);
}

}  // namespace

class FlServer::Impl {
 public:
  Impl(FlServerOptions options, const comm::JobAuth& auth, Logger& logger)
      : options_(std::move(options)), auth_(auth), logger_(logger) {
    validate(options_);
    model_size_ = static_cast<int64_t>(options_.resume ? options_.resume->weights.size()
                                                       : options_.initial_weights.size());
    comm::wire::FramedSocketOptions o;
    o.name = "fl server";
    o.peer = -1;
    o.rank = kServerRank;
    o.limits.job_id = auth_.job_id();
    o.limits.world_size = comm::wire::kAnyReceiver;  // client ids are checked here, with a log line
    o.limits.receiver = kServerRank;
    o.limits.max_payload_bytes = options_.max_payload_bytes;
    o.accepted = {comm::wire::MessageType::kData};
    o.unbounded_queues = true;
    socket_ = std::make_unique<comm::wire::FramedSocket>(
        context_, comm::wire::FramedSocket::Role::kRouter, options_.config.server, std::move(o),
        auth_, logger_);
    endpoint_ = socket_->endpoint();
    if (options_.upload.method != compress::Method::kNone) {
      codec_.emplace(options_.upload, options_.layouts);
      if (codec_->model_size() != model_size_) {
        throw UsageError(fmt::format("fl server: the upload layouts hold {} values, the model {}",
                                     codec_->model_size(), model_size_));
      }
    }
    logger_.info("fl server: listening on {} ({} clients, {} per round, {} rounds)", endpoint_,
                 options_.config.clients, options_.config.clients_per_round(),
                 options_.config.rounds);
  }

  FlServerResult run(const std::stop_token& stop);
  FlServerStats stats() const {
    FlServerStats s;
    s.rounds_done = rounds_done_.load();
    s.rejected_updates = rejected_.load();
    s.dropped_frames = socket_->dropped();
    s.connected = connected_count_.load();
    return s;
  }

  const std::string& endpoint() const { return endpoint_; }

 private:
  struct KnownClient {
    std::string identity;  // the ROUTER routing id of its latest connection
    Clock::time_point last_heard;
    // Sampled and silent until a round's deadline: not sampled again until
    // it is heard from (a join or a late update).
    bool missed = false;
  };
  // The round whose updates are being collected.
  struct OpenRound {
    RoundAggregator aggregator;
    std::set<int64_t> outstanding;  // sampled, not answered yet
    std::set<int64_t> partial;      // accepted partial work
    uint64_t bytes_up = 0;
    int64_t rejected = 0;
  };

  std::vector<int64_t> connected(Clock::time_point now) const;
  // Receives and handles frames until `until` (or `stop`). Returns when a
  // frame was handled or the deadline passed.
  void serve_once(Deadline until, OpenRound* open);
  void handle(const comm::wire::Frame& frame, OpenRound* open);
  void handle_update(const comm::wire::Frame& frame, ClientUpdate update, OpenRound* open);
  void reject(const std::string& reason, OpenRound* open);
  void send(const std::string& identity, int64_t client, std::vector<std::byte> payload);
  // Waits until enough clients are connected for `round` (see the header).
  void wait_for_clients(int64_t round, bool first, const std::stop_token& stop);
  // Runs one attempt at `round`; nullopt when stopped.
  std::optional<OpenRound> collect(int64_t round, int attempt, std::span<const float> weights,
                                   RoundReport& report, const std::stop_token& stop);
  void finish(int64_t rounds_done);

  FlServerOptions options_;
  comm::JobAuth auth_;
  Logger& logger_;
  zmq::context_t context_{1};
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  std::string endpoint_;
  int64_t model_size_ = 0;
  std::optional<UploadCodec> codec_;  // compressed uploads
  std::map<int64_t, KnownClient> clients_;
  bool done_ = false;
  int64_t done_rounds_ = 0;
  std::atomic<int64_t> rounds_done_{0};
  std::atomic<int64_t> rejected_{0};
  std::atomic<int64_t> connected_count_{0};
};

std::vector<int64_t> FlServer::Impl::connected(Clock::time_point now) const {
  std::vector<int64_t> ids;
  for (const auto& [id, known] : clients_) {
    if (!known.missed && now - known.last_heard <= options_.client_timeout) ids.push_back(id);
  }
  return ids;  // ascending: a std::map's order
}

void FlServer::Impl::send(const std::string& identity, int64_t client,
                          std::vector<std::byte> payload) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = client_rank(client);
  socket_->send(identity, header, std::move(payload));
}

void FlServer::Impl::reject(const std::string& reason, OpenRound* open) {
  ++rejected_;
  if (open != nullptr) ++open->rejected;
  logger_.warn("fl server: rejected {}", reason);
}

void FlServer::Impl::serve_once(Deadline until, OpenRound* open) {
  const Deadline slice(std::min(until.at(), Clock::now() + kStopPoll));
  std::optional<comm::wire::Frame> frame = socket_->receive(slice);
  if (frame) handle(*frame, open);
  connected_count_ = static_cast<int64_t>(connected(Clock::now()).size());
}

void FlServer::Impl::handle(const comm::wire::Frame& frame, OpenRound* open) {
  FlMessage m;
  try {
    m = decode_fl_message(frame.payload());
  } catch (const DataError& e) {
    socket_->drop(fmt::format("from rank {}: {}", frame.header.sender, e.what()));
    return;
  }
  const int64_t clients = options_.config.clients;
  if (m.kind == FlKind::kJoin) {
    if (m.client >= clients) {
      reject(fmt::format("a join from client {}: the id is outside [0, {})", m.client, clients),
             open);
      return;
    }
    if (frame.header.sender != client_rank(m.client)) {
      reject(fmt::format("a join from client {} sent by wire rank {} (expected {})", m.client,
                         frame.header.sender, client_rank(m.client)),
             open);
      return;
    }
    auto [it, added] = clients_.try_emplace(m.client);
    if (added || it->second.identity != frame.identity) {
      logger_.info("fl server: client {} {}", m.client, added ? "joined" : "joined again");
    }
    it->second.identity = frame.identity;
    it->second.last_heard = Clock::now();
    it->second.missed = false;
    send(frame.identity, m.client, done_ ? encode_done(done_rounds_) : encode_wait(rounds_done_));
    return;
  }
  if (m.kind == FlKind::kUpdate) {
    handle_update(frame, std::move(m.update), open);
    return;
  }
  if (m.kind == FlKind::kUpdateCompressed) {
    // The delta is the upload message's decoding; a message the codec
    // refuses leaves the delta empty, which the aggregator rejects with the
    // size, after the reason was logged here.
    const std::string context =
        fmt::format("update of client {}, round {}", m.update.client, m.update.round);
    if (!codec_) {
      logger_.warn("fl server: {}: compressed, but this job's uploads are dense", context);
    } else {
      try {
        m.update.delta = codec_->decode(m.upload, model_size_, context);
      } catch (const DataError& e) {
        logger_.warn("fl server: {}", e.what());
      }
    }
    handle_update(frame, std::move(m.update), open);
    return;
  }
  socket_->drop(fmt::format("from rank {}: a {} message, which only the server sends",
                            frame.header.sender, to_string(m.kind)));
}

void FlServer::Impl::handle_update(const comm::wire::Frame& frame, ClientUpdate update,
                                   OpenRound* open) {
  const int64_t client = update.client;
  if (frame.header.sender != client_rank(client)) {
    reject(fmt::format("an update of client {} sent by wire rank {} (expected {})", client,
                       frame.header.sender, client_rank(client)),
           open);
    return;
  }
  auto known = clients_.find(client);
  if (known != clients_.end() && known->second.identity == frame.identity) {
    known->second.last_heard = Clock::now();
    known->second.missed = false;
  }
  if (open == nullptr) {
    reject(
        fmt::format("client {}, round {}: an update while no round is open", client, update.round),
        open);
    return;
  }
  const bool this_round = update.round == open->aggregator.round();
  const bool partial = update.partial;
  if (partial && !options_.config.accepts_partial_work() && this_round) {
    open->outstanding.erase(client);
    reject(fmt::format("client {}, round {}: partial work, which {} does not use", client,
                       update.round, options_.config.algorithm),
           open);
    return;
  }
  std::optional<std::string> why = open->aggregator.add(std::move(update));
  if (this_round) {
    open->outstanding.erase(client);
    open->bytes_up += comm::wire::kHeaderBytes + frame.body.size();
  }
  if (why) {
    reject(*why, open);
    return;
  }
  if (partial) open->partial.insert(client);
}

void FlServer::Impl::wait_for_clients(int64_t round, bool first, const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  const auto start = Clock::now();
  const Deadline limit(start + options_.join_timeout);
  // The first round of a run waits for a full round: the clients are still
  // starting.
  const Deadline fill(
      start + (first ? std::min(options_.join_timeout, options_.fill_timeout) : milliseconds(0)));
  while (!stop.stop_requested()) {
    const auto have = static_cast<int64_t>(connected(Clock::now()).size());
    if (have >= c.clients_per_round() || (have >= c.min_fit_clients && fill.expired())) return;
    if (limit.expired()) {
      throw TimeoutError(
          -1, fmt::format("fl server round {}", round), options_.join_timeout,
          fmt::format("{} connected client(s) (fl.min_fit_clients); {} connected: "
                      "[{}]",
                      c.min_fit_clients, have, fmt::join(connected(Clock::now()), ", ")));
    }
    serve_once(limit, nullptr);
  }
}

std::optional<FlServer::Impl::OpenRound> FlServer::Impl::collect(int64_t round, int attempt,
                                                                 std::span<const float> weights,
                                                                 RoundReport& report,
                                                                 const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  const std::vector<int64_t> available = connected(Clock::now());
  const auto m = std::min<int64_t>(c.clients_per_round(), static_cast<int64_t>(available.size()));
  std::vector<int64_t> sampled;
  for (int64_t i : sample_clients(static_cast<int64_t>(available.size()), m,
                                  attempt_seed(options_.seed, attempt), round)) {
    sampled.push_back(available[static_cast<size_t>(i)]);
  }
  const auto timeout = milliseconds(static_cast<int64_t>(std::ceil(c.round_timeout_s * 1000.0)));
  const Deadline deadline = Deadline::after(timeout);
  OpenRound open{RoundAggregator(round, c.clients, static_cast<int64_t>(weights.size()), sampled),
                 {sampled.begin(), sampled.end()},
                 {},
                 0,
                 0};
  FlTask task;
  task.round = round;
  task.deadline_ms = timeout.count();
  task.training.epochs = c.local_epochs;
  task.training.batch = c.local_batch;
  if (c.algorithm == "fedsgd") {  // one full-batch gradient step, as the simulation
    task.training.epochs = 1;
    task.training.batch = 0;
  }
  task.training.proximal_mu = c.proximal_mu;
  task.weights.assign(weights.begin(), weights.end());
  const std::vector<std::byte> payload = encode_task(task);
  report.bytes_down = 0;
  for (int64_t id : sampled) {
    send(clients_.at(id).identity, id, payload);
    report.bytes_down += comm::wire::kHeaderBytes + payload.size();
  }
  logger_.info("fl server: round {}{}: sent the model to {} client(s) [{}]", round,
               attempt > 0 ? fmt::format(" (attempt {})", attempt + 1) : "", sampled.size(),
               fmt::join(sampled, ", "));
  while (!open.outstanding.empty() && !deadline.expired()) {
    if (stop.stop_requested()) return std::nullopt;
    serve_once(deadline, &open);
  }
  for (int64_t id : open.outstanding) clients_.at(id).missed = true;
  report.sampled = sampled;
  return open;
}

void FlServer::Impl::finish(int64_t rounds_done) {
  done_ = true;
  done_rounds_ = rounds_done;
  for (const auto& [id, known] : clients_) send(known.identity, id, encode_done(rounds_done));
  const Deadline linger = Deadline::after(options_.done_linger);
  while (!linger.expired()) serve_once(linger, nullptr);
}

FlServerResult FlServer::Impl::run(const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  FlServerResult result;
  ServerState& state = result.state;
  if (options_.resume) {
    state = *options_.resume;
  } else {
    state.weights = options_.initial_weights;
  }
  const auto model_size = static_cast<int64_t>(state.weights.size());
  ServerOptimizer optimizer(c.server_optimizer, model_size);
  if (options_.resume) {
    optimizer.load_state_dict(state.optimizer);
    logger_.info("fl server: resuming after round {}", state.round);
  }
  rounds_done_ = state.round;
  bool first = true;
  for (int64_t round = state.round + 1; round <= c.rounds; ++round) {
    RoundReport report;
    report.round = round;
    std::optional<OpenRound> open;
    const auto started = Clock::now();
    for (int attempt = 0;; ++attempt) {
      wait_for_clients(round, first, stop);
      first = false;
      if (stop.stop_requested()) break;
      open = collect(round, attempt, state.weights, report, stop);
      if (!open) break;
      if (open->aggregator.accepted() >= c.min_fit_clients) break;
      const std::vector<int64_t> answered = open->aggregator.accepted_clients();
      const std::string what = fmt::format(
          "{} accepted update(s) within {} s, fewer than fl.min_fit_clients {} (sampled [{}], "
          "accepted [{}])",
          answered.size(), c.round_timeout_s, c.min_fit_clients, fmt::join(report.sampled, ", "),
          fmt::join(answered, ", "));
      if (attempt + 1 >= options_.max_round_attempts) {
        throw CommError(-1, fmt::format("fl server round {}", round),
                        fmt::format("{}; gave up after {} attempt(s)", what, attempt + 1));
      }
      logger_.warn("fl server: round {}: {}; repeating it", round, what);
    }
    if (!open) {
      result.stopped = true;
      break;
    }
    optimizer.apply(state.weights, open->aggregator.mean_delta());
    state.round = round;
    state.rejected_updates += open->rejected;
    report.participated = open->aggregator.accepted_clients();
    std::set_difference(report.sampled.begin(), report.sampled.end(), report.participated.begin(),
                        report.participated.end(), std::back_inserter(report.dropped));
    report.partial.assign(open->partial.begin(), open->partial.end());
    report.rejected = open->rejected;
    report.train_loss = open->aggregator.mean_loss();
    logger_.info("fl server: round {} closed: participated [{}], dropped [{}] ({} rejected)", round,
                 fmt::join(report.participated, ", "), fmt::join(report.dropped, ", "),
                 report.rejected);
    report.bytes_up = open->bytes_up;
    const bool last = round == c.rounds;
    if (options_.evaluate && (last || (c.eval_every > 0 && round % c.eval_every == 0))) {
      report.test = options_.evaluate(state.weights);
      result.last_test = report.test;
      if (c.target_accuracy > 0 && report.test->accuracy >= c.target_accuracy) {
        result.reached_target = true;
      }
    }
    report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    rounds_done_ = round;
    if (options_.on_round) options_.on_round(report);
    if (options_.on_checkpoint && c.checkpoint_every > 0 &&
        (last || result.reached_target || round % c.checkpoint_every == 0)) {
      state.optimizer = optimizer.state_dict();
      options_.on_checkpoint(state);
    }
    if (result.reached_target) break;
  }
  state.optimizer = optimizer.state_dict();
  if (!result.stopped) finish(state.round);
  return result;
}

FlServer::FlServer(FlServerOptions options, const comm::JobAuth& auth, Logger& logger)
    : impl_(std::make_unique<Impl>(std::move(options), auth, logger)) {}
FlServer::~FlServer() = default;
const std::string& FlServer::endpoint() const { return impl_->endpoint(); }
FlServerResult FlServer::run(std::stop_token stop) { return impl_->run(stop); }
FlServerStats FlServer::stats() const { return impl_->stats(); }

}  // namespace dtrain::fl
