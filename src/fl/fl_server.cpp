#include "fl/fl_server.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <string>
#include <utility>

#include "core/error.h"
#include "fl/fl_server_impl.h"
#include "fl/sampling.h"
#include "privacy/secagg_crypto.h"

namespace dtrain::fl {

namespace {

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

FlServer::Impl::Impl(FlServerOptions options, const comm::JobAuth& auth, Logger& logger)
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
               options_.config.clients, options_.config.clients_per_round(), options_.config.rounds,
               options_.config.secure_aggregation ? ", secure aggregation" : "");
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
    open_secagg(open, sampled, round, weights.size(), report);
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
