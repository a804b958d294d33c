// run_simulation(): thousands of virtual federated clients in one process
// (`dtrain fl JOB --clients K`). Each round:
//   1. samples m = clients_per_round() clients (fl/sampling.h);
//   2. decides each one's fate (dropout, straggler: fl/sampling.h);
//   3. trains the others on a pool of `threads` threads, each thread with one
//      ClientTrainer (one model replica per thread), a client at a time;
//      stragglers stop after straggler_steps() and are kept only when the
//      algorithm accepts partial work;
//   4. aggregates in client-id order (fl/update.h) and applies the server
//      optimizer (fl/server_optimizer.h); fewer than min_fit_clients updates
//      leave the model unchanged and the round is reported as failed (it is
//      not repeated: a simulation's fate draws would repeat too);
//   5. evaluates every eval_every rounds and at the last, reports, and
//      checkpoints every checkpoint_every rounds and at the last (0: never);
//      a round whose evaluation reaches target_accuracy is the last (it is
//      checkpointed too) and sets reached_target.
// A sampled client that is dropped, a fedavg straggler (not trained: its
// work would be thrown away), a client without samples and a rejected update
// are all listed in RoundReport::dropped. client_eval: each trained client
// first counts the global model's correct answers on its own data.
// Memory is bounded by the clients of one round (their updates) plus one
// model per thread, never by K: an idle client is its index list (the
// partition) and nothing else.
// Determinism: the result is bit-identical for a seed whatever `threads` is
// (per-client RNG streams, aggregation in client-id order, each client's
// BLAS calls single-threaded: OpenBLAS is set to one thread while clients
// train, whatever `threads` is, and restored before the callbacks run).
// Privacy (fl/private_update.h, docs/federated.md "Privacy in federated
// rounds"): with fl.dp_clip the round's mean is DP-FedAvg's (uniform weights,
// clip S, noise z S on the sum, fixed denominator m) and an RDP accountant
// is stepped once per applied round at q = m / K, sigma = z; with
// fl.dp_target_epsilon the run stops before a round that would exceed it.
// With fl.secure_aggregation the updates are aggregated by an in-memory
// SecAgg round among the sampled clients (privacy::run_secagg_round): the
// clients' side turns each update into its masked input and gives up the
// update; the server side sees the unmasked sum and the included ids only.
// A client whose fate is kDropped then drops at a point secagg_drop_point()
// draws (before advertising: never trained). A secure round that fails
// (fewer than the threshold at a phase) leaves the model unchanged and is
// reported failed with the module's message.
// Threads: the pool's threads live for one round; the callbacks and the
// evaluator run on the calling thread, between rounds.
// Errors: what the callbacks throw propagates after the pool stopped;
// UsageError for inconsistent options (parts.size() != clients, a resume
// state of another size). Blocking: runs the whole job.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "compress/compressor.h"
#include "data/dataset.h"
#include "fl/client_trainer.h"
#include "fl/fl_config.h"
#include "fl/server_state.h"

namespace dtrain::fl {

struct Evaluation {
  double loss = 0.0;
  double accuracy = 0.0;  // fraction in [0, 1]
  int64_t samples = 0;
};
// Evaluates flat global weights (server side, on the test set).
using Evaluator = std::function<Evaluation(std::span<const float> weights)>;

struct RoundReport {
  int64_t round = 0;  // 1-based
  std::vector<int64_t> sampled;
  std::vector<int64_t> participated;  // updates aggregated (partial ones included)
  std::vector<int64_t> dropped;       // sampled but not aggregated (no answer, late, rejected)
  std::vector<int64_t> partial;       // stragglers whose partial work was aggregated
  int64_t rejected = 0;               // updates refused by validation
  bool failed = false;                // fewer than min_fit_clients: model unchanged
  double train_loss = 0.0;            // sample-weighted mean local loss (NaN if none)
  uint64_t bytes_down = 0;            // model bytes sent to the sampled clients
  uint64_t bytes_up = 0;  // the aggregated updates: 4 bytes a value, or their upload messages
  double seconds = 0.0;   // wall time of the round
  std::optional<Evaluation> test;         // when evaluated this round
  std::optional<double> client_accuracy;  // client_eval: the global model's accuracy on the
                                          // aggregated clients' own data (sample-weighted)
  // Privacy (fl/private_update.h). secure: the round went through secure
  // aggregation (train_loss is then NaN: no client's loss is revealed);
  // failure: why a secure round failed (the privacy module's message).
  bool secure = false;
  std::string failure;
  // DP-FedAvg: the spent epsilon at fl.dp_delta after this round (Balle et
  // al.'s conversion, the budget's, and the classic one).
  std::optional<double> epsilon;
  std::optional<double> epsilon_classic;
};

struct SimulationOptions {
  FlConfig config;
  uint64_t seed = 1;
  optim::OptimizerConfig client_optimizer;  // the job's [optimizer]
  const data::TensorDataset* train = nullptr;
  std::vector<std::vector<int64_t>> parts;  // parts[k]: client k's sample indices
  ModelFactory make_model;                  // the same initial weights on every call
  Evaluator evaluate;                       // may be empty (no test evaluation)
  std::function<void(const RoundReport&)> on_round;
  // The state after a round (its tensors are copies the callee may keep).
  std::function<void(const ServerState&)> on_checkpoint;
  // Continue after resume->round with its weights and server optimizer
  // state (nothing runs when resume->round >= config.rounds).
  std::optional<ServerState> resume;
  // How clients upload (fl/upload_codec.h): method none sends the delta
  // dense (bytes_up counts 4 bytes a value); any other method encodes each
  // update and aggregates what the message decodes to, as a deployed server
  // would, and bytes_up counts the messages.
  compress::Options upload;
};

struct SimulationResult {
  ServerState state;
  std::optional<Evaluation> last_test;
  bool reached_target = false;
  // DP-FedAvg: the run stopped before a round that would have exceeded
  // fl.dp_target_epsilon; budget_stop says so in words.
  bool budget_exhausted = false;
  std::string budget_stop;
};

SimulationResult run_simulation(const SimulationOptions& options);

}  // namespace dtrain::fl
