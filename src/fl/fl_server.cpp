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
#include "fl/fl_secagg.h"
#include "fl/private_update.h"
#include "fl/round_accountant.h"
#include "fl/sampling.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"
#include "fl/upload_codec.h"
#include "privacy/secagg_crypto.h"

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
  if (c.dp() && !c.secure_aggregation) {
    // The plain path aggregates with RoundAggregator, which neither clips
    // nor noises: refuse rather than run without the privacy asked for.
    throw ConfigError(
        "fl.dp_clip: the deployed mode applies DP-FedAvg only with fl.secure_aggregation = true");
  }
  if (o.config.secure_aggregation) {
    validate(o.secagg);
    if (!(o.mean_samples > 0) || !std::isfinite(o.mean_samples)) {
      throw UsageError(fmt::format("fl server: secure aggregation needs mean_samples > 0, not {}",
                                   o.mean_samples));
    }
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
      : options_(std::move(options)),
        accountant_(options_.config, options_.resume ? options_.resume->round : 0,
                    options_.resume ? options_.resume->accountant : ServerState{}.accountant,
                    "fl server"),
        auth_(auth),
        logger_(logger) {
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
    if (options_.config.secure_aggregation) privacy::ensure_sodium();
    logger_.info("fl server: listening on {} ({} clients, {} per round, {} rounds{})", endpoint_,
                 options_.config.clients, options_.config.clients_per_round(),
                 options_.config.rounds,
                 options_.config.secure_aggregation ? ", secure aggregation" : "");
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
  // A round's secure aggregation (config.secure_aggregation).
  struct SecAggRound {
    explicit SecAggRound(const privacy::SecAggConfig& config)
        : server(config), session(config.round), threshold(config.threshold) {}
    privacy::SecAggServer server;
    uint32_t session = 0;
    uint32_t threshold = 0;
    std::vector<int64_t> ids;           // SecAgg index -> client id
    std::map<int64_t, uint32_t> index;  // client id -> SecAgg index
    int phase = 0;
    std::set<int64_t> outstanding;  // expected to answer this phase
    std::vector<int64_t> answered;  // answered this phase (accepted)
    struct Meta {
      int64_t samples = 0;
      double loss = 0;
    };
    std::map<int64_t, Meta> meta;  // phase 2's plaintext metadata
    // After phase 3: the mean delta and the included clients (ascending).
    std::optional<std::vector<float>> mean_delta;
    std::vector<int64_t> included;
    std::string failure;  // why the attempt failed (a phase short of answers)
  };
  // The round whose updates are being collected.
  struct OpenRound {
    RoundAggregator aggregator;
    std::set<int64_t> outstanding;  // sampled, not answered yet
    std::set<int64_t> partial;      // accepted partial work
    uint64_t bytes_up = 0;
    int64_t rejected = 0;
    std::optional<SecAggRound> secagg;
    double sampling_rate = 0;  // the accountant's q: sampled over the connected pool

    int64_t accepted() const {
      if (!secagg) return aggregator.accepted();
      return secagg->mean_delta ? static_cast<int64_t>(secagg->included.size()) : 0;
    }
    std::vector<int64_t> accepted_clients() const {
      if (!secagg) return aggregator.accepted_clients();
      return secagg->mean_delta ? secagg->included : std::vector<int64_t>{};
    }
    std::vector<float> mean_delta() const {
      return secagg ? *secagg->mean_delta : aggregator.mean_delta();
    }
    double mean_loss() const;
  };

  std::vector<int64_t> connected(Clock::time_point now) const;
  // Receives and handles frames until `until` (or `stop`). Returns when a
  // frame was handled or the deadline passed.
  void serve_once(Deadline until, OpenRound* open);
  void handle(const comm::wire::Frame& frame, OpenRound* open);
  void handle_update(const comm::wire::Frame& frame, ClientUpdate update, OpenRound* open);
  void reject(const std::string& reason, OpenRound* open);
  void handle_secagg(const comm::wire::Frame& frame, const FlSecAggPayload& answer,
                     OpenRound* open);
  // Runs the four SecAgg phases of an attempt whose tasks were sent;
  // false when stopped.
  bool run_secagg(OpenRound& open, Clock::time_point started, milliseconds timeout,
                  RoundReport& report, const std::stop_token& stop);
  void send(const std::string& identity, int64_t client, std::vector<std::byte> payload);
  // Waits until enough clients are connected for `round` (see the header).
  void wait_for_clients(int64_t round, bool first, const std::stop_token& stop);
  // Runs one attempt at `round` among the `available` clients; nullopt when stopped.
  std::optional<OpenRound> collect(int64_t round, int attempt,
                                   const std::vector<int64_t>& available,
                                   std::span<const float> weights, RoundReport& report,
                                   const std::stop_token& stop);
  // The attempts at `round` until one has min_fit_clients updates (returned),
  // the run is stopped or the privacy budget stops it (nullopt; `result`
  // says which). Throws CommError after max_round_attempts failed attempts.
  std::optional<OpenRound> attempt_round(int64_t round, bool first, std::span<const float> weights,
                                         RoundReport& report, FlServerResult& result,
                                         const std::stop_token& stop);
  // Applies the attempt's mean, steps the accountant and fills the report.
  void apply_round(const OpenRound& open, ServerOptimizer& optimizer, ServerState& state,
                   RoundReport& report);
  void finish(int64_t rounds_done);

  FlServerOptions options_;
  RoundAccountant accountant_;  // DP-FedAvg (inert without fl.dp_clip)
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
  uint32_t secagg_sessions_ = 0;  // SecAgg sessions started (one per round attempt)
};

double FlServer::Impl::OpenRound::mean_loss() const {
  if (!secagg) return aggregator.mean_loss();
  double weighted = 0;
  double total = 0;
  for (int64_t id : secagg->included) {
    const auto found = secagg->meta.find(id);
    if (found == secagg->meta.end()) continue;
    weighted += static_cast<double>(found->second.samples) * found->second.loss;
    total += static_cast<double>(found->second.samples);
  }
  return total > 0 ? weighted / total : std::nan("");
}

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
  if (m.kind == FlKind::kSecAggAnswer) {
    handle_secagg(frame, m.secagg, open);
    return;
  }
  if (options_.config.secure_aggregation &&
      (m.kind == FlKind::kUpdate || m.kind == FlKind::kUpdateCompressed)) {
    reject(fmt::format("client {}, round {}: a plain update, but this job uses secure aggregation",
                       m.update.client, m.update.round),
           open);
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

void FlServer::Impl::handle_secagg(const comm::wire::Frame& frame, const FlSecAggPayload& answer,
                                   OpenRound* open) {
  const int64_t client = answer.client;
  const char* phase = privacy::secagg_phase_name(answer.phase);
  if (frame.header.sender != client_rank(client)) {
    reject(fmt::format("a secagg answer of client {} sent by wire rank {} (expected {})", client,
                       frame.header.sender, client_rank(client)),
           open);
    return;
  }
  auto known = clients_.find(client);
  if (known != clients_.end() && known->second.identity == frame.identity) {
    known->second.last_heard = Clock::now();
    known->second.missed = false;
  }
  if (open == nullptr || !open->secagg || answer.round != open->aggregator.round() ||
      answer.session != open->secagg->session) {
    logger_.info("fl server: ignored client {}'s secagg answer of phase {} for round {}: late",
                 client, phase, answer.round);
    return;
  }
  SecAggRound& sa = *open->secagg;
  if (answer.phase != sa.phase || sa.outstanding.count(client) == 0) {
    if (sa.index.count(client) == 0) {
      reject(fmt::format("client {}, round {}, secagg phase {}: not sampled in this round", client,
                         answer.round, phase),
             open);
    } else {
      logger_.info(
          "fl server: ignored client {}'s secagg answer of phase {} in round {} (phase {} is open)",
          client, phase, answer.round, privacy::secagg_phase_name(sa.phase));
    }
    return;
  }
  sa.outstanding.erase(client);
  open->bytes_up += comm::wire::kHeaderBytes + frame.body.size();
  const uint32_t u = sa.index.at(client);
  try {
    switch (answer.phase) {
      case 0:
        sa.server.receive_advertise(u, answer.message);
        break;
      case 1:
        sa.server.receive_share_keys(u, answer.message);
        break;
      case 2:
        if (answer.samples < 1 || !std::isfinite(answer.loss)) {
          throw DataError(
              fmt::format("samples {} and loss {}: expected samples >= 1 and a "
                          "finite loss",
                          answer.samples, answer.loss));
        }
        sa.server.receive_masked_input(u, answer.message);
        sa.meta[client] = {answer.samples, answer.loss};
        break;
      default:
        sa.server.receive_unmasking(u, answer.message);
        break;
    }
  } catch (const DataError& e) {
    reject(fmt::format("client {}, round {}, secagg phase {}: {}", client, answer.round, phase,
                       e.what()),
           open);
    return;
  }
  sa.answered.push_back(client);
}

bool FlServer::Impl::run_secagg(OpenRound& open, Clock::time_point started, milliseconds timeout,
                                RoundReport& report, const std::stop_token& stop) {
  SecAggRound& sa = *open.secagg;
  std::map<uint32_t, privacy::SecAggMessage> outgoing;
  double share = 0;
  for (int phase = 0; phase < 4; ++phase) {
    sa.phase = phase;
    sa.answered.clear();
    sa.outstanding.clear();
    if (phase == 0) {
      sa.outstanding.insert(sa.ids.begin(), sa.ids.end());
    } else {
      for (auto& [u, message] : outgoing) {
        const int64_t id = sa.ids.at(u);
        FlSecAggPayload b;
        b.round = open.aggregator.round();
        b.session = sa.session;
        b.phase = static_cast<uint8_t>(phase);
        b.message = std::move(message);
        std::vector<std::byte> payload = encode_secagg_broadcast(b);
        report.bytes_down += comm::wire::kHeaderBytes + payload.size();
        send(clients_.at(id).identity, id, std::move(payload));
        sa.outstanding.insert(id);
      }
    }
    const std::set<int64_t> asked = sa.outstanding;
    share += options_.secagg.phase_shares[static_cast<size_t>(phase)];
    const Deadline deadline(started +
                            milliseconds(static_cast<int64_t>(std::ceil(share * timeout.count()))));
    while (!sa.outstanding.empty() && !deadline.expired()) {
      if (stop.stop_requested()) return false;
      serve_once(deadline, &open);
    }
    for (int64_t id : sa.outstanding) clients_.at(id).missed = true;
    if (!sa.outstanding.empty()) {
      logger_.warn("fl server: round {}: secagg phase {}: no answer by its deadline from [{}]",
                   open.aggregator.round(), privacy::secagg_phase_name(phase),
                   fmt::join(sa.outstanding, ", "));
    }
    try {
      switch (phase) {
        case 0:
          outgoing = sa.server.finish_advertise();
          break;
        case 1:
          outgoing = sa.server.finish_share_keys();
          break;
        case 2:
          outgoing = sa.server.finish_masked_input();
          break;
        default: {
          privacy::SecAggResult result = sa.server.finish();
          for (uint32_t u : result.included) sa.included.push_back(sa.ids.at(u));
          std::sort(sa.included.begin(), sa.included.end());
          double weight = 0;
          for (int64_t id : sa.included) {
            weight += client_weight(options_.config, sa.meta.at(id).samples, options_.mean_samples);
          }
          Rng noise = server_noise_rng(options_.seed, open.aggregator.round());
          sa.mean_delta =
              secagg_output(result.sum, options_.config, static_cast<int64_t>(sa.ids.size()),
                            static_cast<int64_t>(sa.included.size()), weight, noise);
          break;
        }
      }
    } catch (const CommError& e) {
      std::vector<int64_t> answered = sa.answered;
      std::sort(answered.begin(), answered.end());
      sa.failure = fmt::format(
          "secure aggregation failed in phase {}: {} of {} client(s) answered [{}], threshold {} "
          "({})",
          privacy::secagg_phase_name(phase), answered.size(), asked.size(),
          fmt::join(answered, ", "), sa.threshold, e.what());
      return true;
    }
  }
  return true;
}

void FlServer::Impl::wait_for_clients(int64_t round, bool first, const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  const auto start = Clock::now();
  const Deadline limit(start + options_.join_timeout);
  // The first round of a run waits for a full round: the clients are still
  // starting. With DP a full round is all K clients: sampling m from a
  // smaller pool raises the accountant's q above m / K.
  const Deadline fill(
      start + (first ? std::min(options_.join_timeout, options_.fill_timeout) : milliseconds(0)));
  const int64_t full = first && c.dp() ? c.clients : c.clients_per_round();
  while (!stop.stop_requested()) {
    const auto have = static_cast<int64_t>(connected(Clock::now()).size());
    if (have >= full || (have >= c.min_fit_clients && fill.expired())) return;
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

std::optional<FlServer::Impl::OpenRound> FlServer::Impl::collect(
    int64_t round, int attempt, const std::vector<int64_t>& available,
    std::span<const float> weights, RoundReport& report, const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  const auto m = std::min<int64_t>(c.clients_per_round(), static_cast<int64_t>(available.size()));
  std::vector<int64_t> sampled;
  for (int64_t i : sample_clients(static_cast<int64_t>(available.size()), m,
                                  attempt_seed(options_.seed, attempt), round)) {
    sampled.push_back(available[static_cast<size_t>(i)]);
  }
  const auto timeout = milliseconds(static_cast<int64_t>(std::ceil(c.round_timeout_s * 1000.0)));
  const Deadline deadline = Deadline::after(timeout);
  OpenRound open{
      RoundAggregator(round, c.clients, static_cast<int64_t>(weights.size()), sampled),
      {sampled.begin(), sampled.end()},
      {},
      0,
      0,
      std::nullopt,
      available.empty() ? 0.0 : sampling_rate(m, static_cast<int64_t>(available.size()))};
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
  if (options_.config.secure_aggregation) {
    // The simulation's configuration (graph seed from (seed, round)), with
    // a session number of its own as SecAgg's round: a repeated attempt's
    // messages never pass for the next one's.
    privacy::SecAggConfig config =
        secagg_config(options_.config, static_cast<int64_t>(sampled.size()), options_.seed, round,
                      static_cast<uint64_t>(weights.size()));
    config.round = ++secagg_sessions_;
    open.secagg.emplace(config);
    FlSecAggSetup setup;
    setup.round = round;
    setup.session = config.round;
    setup.clients = config.clients;
    setup.threshold = config.threshold;
    setup.graph = static_cast<uint8_t>(config.graph);
    setup.degree = config.degree;
    setup.graph_seed = config.graph_seed;
    setup.clip = config.clip;
    setup.vector_length = config.vector_length;
    setup.min_survivors = config.min_survivors;
    setup.mean_samples = options_.mean_samples;
    for (size_t u = 0; u < sampled.size(); ++u) {  // sampled is ascending
      open.secagg->ids.push_back(sampled[u]);
      open.secagg->index[sampled[u]] = static_cast<uint32_t>(u);
      setup.index = static_cast<uint32_t>(u);
      std::vector<std::byte> bytes = encode_secagg_setup(setup);
      report.bytes_down += comm::wire::kHeaderBytes + bytes.size();
      send(clients_.at(sampled[u]).identity, sampled[u], std::move(bytes));
    }
  }
  for (int64_t id : sampled) {
    send(clients_.at(id).identity, id, payload);
    report.bytes_down += comm::wire::kHeaderBytes + payload.size();
  }
  logger_.info("fl server: round {}{}: sent the model to {} client(s) [{}]", round,
               attempt > 0 ? fmt::format(" (attempt {})", attempt + 1) : "", sampled.size(),
               fmt::join(sampled, ", "));
  report.sampled = sampled;
  if (open.secagg) {
    if (!run_secagg(open, deadline.at() - timeout, timeout, report, stop)) return std::nullopt;
    return open;
  }
  while (!open.outstanding.empty() && !deadline.expired()) {
    if (stop.stop_requested()) return std::nullopt;
    serve_once(deadline, &open);
  }
  for (int64_t id : open.outstanding) clients_.at(id).missed = true;
  return open;
}

void FlServer::Impl::finish(int64_t rounds_done) {
  done_ = true;
  done_rounds_ = rounds_done;
  for (const auto& [id, known] : clients_) send(known.identity, id, encode_done(rounds_done));
  const Deadline linger = Deadline::after(options_.done_linger);
  while (!linger.expired()) serve_once(linger, nullptr);
}

std::optional<FlServer::Impl::OpenRound> FlServer::Impl::attempt_round(
    int64_t round, bool first, std::span<const float> weights, RoundReport& report,
    FlServerResult& result, const std::stop_token& stop) {
  const FlConfig& c = options_.config;
  for (int attempt = 0;; ++attempt) {
    wait_for_clients(round, first && attempt == 0, stop);
    if (stop.stop_requested()) break;
    const std::vector<int64_t> available = connected(Clock::now());
    if (!available.empty()) {
      const auto pool = static_cast<int64_t>(available.size());
      const double q = sampling_rate(std::min(c.clients_per_round(), pool), pool);
      if (std::optional<std::string> why = accountant_.budget_stop(round, q)) {
        result.budget_exhausted = true;
        result.budget_stop = std::move(*why);
        logger_.info("fl server: {}", result.budget_stop);
        return std::nullopt;
      }
    }
    std::optional<OpenRound> open = collect(round, attempt, available, weights, report, stop);
    if (!open) break;
    if (open->accepted() >= c.min_fit_clients) return open;
    const std::vector<int64_t> answered = open->accepted_clients();
    const std::string what =
        open->secagg && !open->secagg->failure.empty()
            ? fmt::format("{} (sampled [{}])", open->secagg->failure,
                          fmt::join(report.sampled, ", "))
            : fmt::format(
                  "{} accepted update(s) within {} s, fewer than fl.min_fit_clients {} (sampled "
                  "[{}], accepted [{}])",
                  answered.size(), c.round_timeout_s, c.min_fit_clients,
                  fmt::join(report.sampled, ", "), fmt::join(answered, ", "));
    if (attempt + 1 >= options_.max_round_attempts) {
      throw CommError(-1, fmt::format("fl server round {}", round),
                      fmt::format("{}; gave up after {} attempt(s)", what, attempt + 1));
    }
    logger_.warn("fl server: round {}: {}; repeating it", round, what);
  }
  result.stopped = true;
  return std::nullopt;
}

void FlServer::Impl::apply_round(const OpenRound& open, ServerOptimizer& optimizer,
                                 ServerState& state, RoundReport& report) {
  optimizer.apply(state.weights, open.mean_delta());
  accountant_.step(open.sampling_rate);
  state.round = report.round;
  state.rejected_updates += open.rejected;
  report.participated = open.accepted_clients();
  std::set_difference(report.sampled.begin(), report.sampled.end(), report.participated.begin(),
                      report.participated.end(), std::back_inserter(report.dropped));
  report.partial.assign(open.partial.begin(), open.partial.end());
  report.rejected = open.rejected;
  report.train_loss = open.mean_loss();
  report.bytes_up = open.bytes_up;
  report.secure = open.secagg.has_value();
  accountant_.record(report, state);
  logger_.info("fl server: round {} closed: participated [{}], dropped [{}] ({} rejected){}",
               report.round, fmt::join(report.participated, ", "), fmt::join(report.dropped, ", "),
               report.rejected,
               report.epsilon ? fmt::format(", epsilon {:.4g}", *report.epsilon) : "");
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
  const int64_t first_round = state.round + 1;
  for (int64_t round = first_round; round <= c.rounds; ++round) {
    RoundReport report;
    report.round = round;
    const auto started = Clock::now();
    const std::optional<OpenRound> open =
        attempt_round(round, round == first_round, state.weights, report, result, stop);
    if (!open) break;
    apply_round(*open, optimizer, state, report);
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
