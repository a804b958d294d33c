// FlServer: the server of a deployed federated job (`dtrain fl-server`). It
// binds a ROUTER socket (fl/fl_protocol.h over comm/wire/framed_socket.h,
// every frame authenticated with the job secret), keeps track of the
// clients that joined, and runs the rounds:
//
//   1. waits (at most join_timeout) until min_fit_clients clients are
//      connected: joined and heard from within client_timeout (the first
//      round of a run waits up to fill_timeout for a full round: m clients,
//      with DP all K, so that q is m / K as the simulation's);
//   2. samples m = min(clients_per_round(), connected) of the connected ids:
//      sample_clients() over their ascending list, a pure function of
//      (seed, round, attempt), so a resumed server repeats the draw for the
//      same clients;
//   3. sends each a kTask with the global weights and the local training;
//   4. collects kUpdates until every sampled client answered or
//      round_timeout_s passed; RoundAggregator (fl/update.h) validates each
//      (stale round, unknown or unsampled client, duplicate, wrong size,
//      non-finite): a rejected one is counted and logged naming the client;
//   5. with >= min_fit_clients accepted updates applies the ServerOptimizer to
//      the weighted mean delta, evaluates every eval_every rounds (and the
//      last), reports (on_round, the simulation's RoundReport: the sampled
//      that did not answer in time are `dropped`) and checkpoints (on_checkpoint,
//      every checkpoint_every rounds and the last); with fewer it repeats the
//      round (a new draw) up to max_round_attempts, then throws CommError
//      naming the round and who answered.
// Secure aggregation (config.secure_aggregation): in step 3 each sampled client
// gets a kSecAggSetup (the round's SecAgg configuration, its index among the
// sampled in ascending id order) just before its kTask; step 4 becomes the
// four phases of privacy/secagg.h, each closing when every client still in
// the round answered or at its deadline (fl/fl_secagg.h), after which the
// next phase's messages go out. A client that misses a phase's deadline is a
// dropout and SecAgg's recovery runs; a phase with fewer answers than the
// threshold fails the attempt (the error names the phase, who answered and
// the threshold) and the round is repeated like a round with too few
// updates. The server only ever holds masked vectors and applies
// secagg_output() of the unmasked sum (fl/private_update.h: the weighted
// mean, or with DP the noised mean over the planned clients); the included
// clients are the round's participants, and min_fit_clients applies to
// them. A malformed
// SecAgg answer (privacy's DataError) is rejected, counted and logged
// naming the client and the phase; that client is out of the phase.
// DP-FedAvg (config.dp(), with secure aggregation): fl/round_accountant.h,
// as the simulation. Before each attempt, with fl.dp_target_epsilon, the
// server checks that one more round at the attempt's sampling rate q =
// sampled / connected (never below m / K; docs/federated.md) stays within
// the budget, else it stops there (result.budget_exhausted, the message in
// result.budget_stop) and ends the run as after its last round. The
// accountant is stepped once per applied round (a repeated attempt spends
// nothing); the report carries epsilon and epsilon_classic, the checkpointed
// ServerState the accountant, and a resumed server continues it.
// At the end every known client gets kDone; for done_linger afterwards a
// client that joins is answered kDone too. A client that joins in the
// middle of a round (restarted, late) takes part from the next round. A
// sampled client that did not answer by a round's deadline is not sampled
// again until it is heard from (its next join, or its late update), so a
// dead client costs one round's deadline, not one per round until
// client_timeout.
//
// Ownership: owns its ZeroMQ context and socket; the Logger must outlive it.
// Thread safety: run() on one thread; stats() and endpoint() from any thread.
// Errors: the constructor throws CommError when it cannot bind, UsageError
// for inconsistent options (a DP resume state without its accountant), ConfigError for DP
// (fl.dp_clip) without secure aggregation (the plain path does not clip or noise); run() throws
// TimeoutError when too few clients join in time, CommError when a round fails max_round_attempts
// times, and what the callbacks throw. Blocking: run() for the whole job, every wait bounded by a
// deadline, and returns early (result.stopped) when `stop` is requested.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "comm/wire/auth.h"
#include "compress/compressor.h"
#include "core/log.h"
#include "fl/fl_config.h"
#include "fl/fl_secagg.h"
#include "fl/server_state.h"
#include "fl/simulation.h"

namespace dtrain::fl {

struct FlServerOptions {
  FlConfig config;  // clients, rounds, fraction, round_timeout_s, server (the bind address), ...
  uint64_t seed = 1;
  std::string job_name;                // log lines only (the auth holds the job id)
  std::vector<float> initial_weights;  // the global model before round 1
  std::optional<ServerState> resume;   // continue after resume->round instead
  Evaluator evaluate;                  // may be empty
  std::function<void(const RoundReport&)> on_round;
  std::function<void(const ServerState&)> on_checkpoint;
  // A client unheard for this long is not sampled (it is "connected" until then).
  std::chrono::milliseconds client_timeout{10000};
  // How long a round start waits for min_fit_clients connected clients.
  std::chrono::milliseconds join_timeout{60000};
  // The first round of a run (the clients are still starting) waits this
  // long for clients_per_round() connected clients (with DP: all
  // config.clients, for the accountant's q) before it starts with fewer (at
  // most join_timeout).
  std::chrono::milliseconds fill_timeout{30000};
  // Attempts at one round (a new draw each) before the job stops.
  int max_round_attempts = 3;
  // After the last round: how long joins are still answered kDone.
  std::chrono::milliseconds done_linger{1000};
  uint64_t max_payload_bytes = uint64_t{1} << 30;
  // Compressed uploads (fl/upload_codec.h): with a method other than none,
  // kUpdateCompressed messages are decoded with this codec over `layouts`
  // (the model's, fl::layouts_of); with none, such a message is refused.
  compress::Options upload;
  std::vector<compress::TensorLayout> layouts;
  // Secure aggregation (config.secure_aggregation; fl/fl_secagg.h): every
  // round runs the four SecAgg phases (see "Secure aggregation" below)
  // instead of collecting plain updates; plain and compressed updates are
  // then refused. mean_samples is client_weight()'s n_bar (the mean samples
  // a client holds; > 0 when secure aggregation is on), sent to the clients
  // in each setup.
  FlSecAggOptions secagg;
  double mean_samples = 0;
};

struct FlServerStats {
  int64_t rounds_done = 0;
  int64_t rejected_updates = 0;  // refused by RoundAggregator, or an unknown client id,
                                 // or a malformed SecAgg answer
  uint64_t dropped_frames = 0;   // refused by the socket (bad header, CRC, MAC) or undecodable
  int64_t connected = 0;
};

struct FlServerResult {
  ServerState state;
  std::optional<Evaluation> last_test;
  bool reached_target = false;
  bool stopped = false;  // `stop` was requested before the last round
  // DP-FedAvg: the run stopped before a round (attempt) that would have
  // exceeded fl.dp_target_epsilon; budget_stop says so in words.
  bool budget_exhausted = false;
  std::string budget_stop;
};

class FlServer {
 public:
  FlServer(FlServerOptions options, const comm::JobAuth& auth, Logger& logger);
  ~FlServer();
  FlServer(const FlServer&) = delete;
  FlServer& operator=(const FlServer&) = delete;

  // The bound address with its real port ("tcp://127.0.0.1:40123").
  const std::string& endpoint() const;
  FlServerResult run(std::stop_token stop = {});
  FlServerStats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::fl
