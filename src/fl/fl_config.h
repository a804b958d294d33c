// FlConfig: a federated job's settings, the [fl] table of a job file
// (docs/federated.md). The clients' own optimizer is the job's [optimizer]
// (a fresh one every round, as in McMahan et al. 2017); their data split is
// the job's [data] partition over `clients` parts.
//
//   algorithm          fedavg | fedsgd | fedprox
//                      fedsgd: one full-batch gradient step per client
//                      (forces local_epochs = 1, local_batch = 0);
//                      fedprox: proximal_mu > 0 and stragglers' partial work
//                      accepted (Li et al. 2020).
//   clients            K, the number of clients (>= 1)
//   fraction           C in (0, 1]: m = max(1, round(C K)) clients per round
//   rounds             rounds to run (>= 1)
//   local_epochs       E (>= 1)
//   local_batch        B (>= 0); 0 is B = infinity (the whole local data)
//   proximal_mu        FedProx mu (>= 0); 0 is plain FedAvg
//   server_optimizer   none (w += mean delta) | momentum (FedAvgM) |
//                      adam | yogi | adagrad (FedOpt, Reddi et al. 2021)
//   server_lr, server_momentum, server_beta1, server_beta2, server_tau
//   eval_every         server-side test evaluation every k rounds (and the last)
//   target_accuracy    stop at the first evaluated round at or above it (0: off)
//   dropout            fraction of sampled clients that never answer
//   stragglers         fraction of sampled clients `straggler_slowdown` times
//                      slower: by the round's deadline they finish
//                      ceil(steps / slowdown) of their steps; fedprox uses
//                      that partial work, fedavg leaves them out
//   min_fit_clients    fewest updates that close a round (>= 1)
//   round_timeout_s    a deployed round's deadline (> 0)
//   threads            simulation threads (0: one per core)
//   checkpoint_every   rounds between server checkpoints (0: off)
//   server             deployment: the server's address "tcp://HOST:PORT"
//   client_eval        clients also report their accuracy on their own data
// Privacy (fl/private_update.h; docs/federated.md, "Privacy in federated rounds"):
//   secure_aggregation   rounds aggregate through privacy's SecAgg (needs
//                        clients_per_round >= 3)
//   secagg_graph         full (Bonawitz et al. 2017) | sparse (SecAgg+)
//   secagg_threshold     Shamir t; 0: floor(holders / 2) + 1
//   secagg_clip          c: each masked value is clipped to [-c, c] (> 0)
//   dp_clip              S: DP-FedAvg's L2 clip of each update (0: DP off)
//   dp_noise_multiplier  z (> 0 with dp_clip, unless dp_target_epsilon solves it)
//   dp_delta             delta in (0, 1) of the reported epsilon
//   dp_target_epsilon    stop before a round that would exceed it (0: off);
//                        without z, z is solved for `rounds` rounds
//
// Errors: ConfigError naming "fl.<key>" and its line for an unknown key, a
// wrong type or a value out of range. Thread safety: a value type.
#pragma once

#include <cstdint>
#include <string>

#include "core/config_table.h"

namespace dtrain::fl {

struct ServerOptimizerConfig {
  std::string type = "none";  // none | momentum | adam | yogi | adagrad
  double lr = 1.0;            // eta; "none" applies the mean delta times lr
  double momentum = 0.9;      // momentum (FedAvgM)
  double beta1 = 0.9;         // adam, yogi
  double beta2 = 0.99;        // adam, yogi
  double tau = 1e-3;          // adam, yogi, adagrad: the adaptivity epsilon
};

struct FlConfig {
  std::string algorithm = "fedavg";
  int64_t clients = 100;
  double fraction = 0.1;
  int64_t rounds = 100;
  int64_t local_epochs = 1;
  int64_t local_batch = 10;  // 0: the whole local data in one batch
  double proximal_mu = 0.0;
  ServerOptimizerConfig server_optimizer;
  int64_t eval_every = 1;
  double target_accuracy = 0.0;
  double dropout = 0.0;
  double stragglers = 0.0;
  double straggler_slowdown = 10.0;
  int64_t min_fit_clients = 1;
  double round_timeout_s = 60.0;
  int64_t threads = 0;
  int64_t checkpoint_every = 1;
  std::string server = "tcp://127.0.0.1:0";
  bool client_eval = false;
  bool secure_aggregation = false;
  std::string secagg_graph = "full";  // full | sparse
  int64_t secagg_threshold = 0;       // 0: floor(holders / 2) + 1
  double secagg_clip = 1.0;
  double dp_clip = 0.0;  // 0: no differential privacy
  double dp_noise_multiplier = 0.0;
  double dp_delta = 1e-5;
  double dp_target_epsilon = 0.0;  // 0: no budget

  // Clients sampled per round: max(1, round(fraction * clients)).
  int64_t clients_per_round() const;
  // Whether stragglers' partial work is used (fedprox).
  bool accepts_partial_work() const { return algorithm == "fedprox"; }
  // Whether DP-FedAvg is on (dp_clip > 0).
  bool dp() const { return dp_clip > 0.0; }
  // The accountant's sampling rate q = clients_per_round / clients.
  double dp_sampling_rate() const;
};

// Reads the [fl] table (every key optional) and checks the result: the
// algorithm's constraints (fedsgd with local_batch or local_epochs set to
// something else is a ConfigError naming the key).
FlConfig read_fl_config(ConfigTable& table);

}  // namespace dtrain::fl
