#include "fl/fl_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "privacy/rdp_accountant.h"

namespace dtrain::fl {

namespace {

// ConfigError for `key` unless low <= value <= high (a finite number).
void check_range(const ConfigTable& t, std::string_view key, double value, double low, double high,
                 const char* what) {
  if (!std::isfinite(value) || value < low || value > high) {
    throw t.error(key, fmt::format("must be {}, got {}", what, value));
  }
}

// The privacy keys (docs/federated.md, "Privacy in federated rounds").
void check_privacy(const ConfigTable& t, FlConfig& c, bool z_set) {
  check_choice(t.lines(), "secagg_graph", c.secagg_graph, {"full", "sparse"});
  const int64_t m = c.clients_per_round();
  if (c.secure_aggregation && m < 3) {
    throw t.error("secure_aggregation",
                  fmt::format("needs at least 3 clients per round (fraction x clients), got {}: "
                              "with 2 each would learn the other's update from the sum",
                              m));
  }
  if (c.secagg_threshold < 0 || (c.secure_aggregation && c.secagg_threshold > m)) {
    throw t.error("secagg_threshold",
                  fmt::format("must be 0 (the default rule) or in [1, {}] (the clients per "
                              "round), got {}",
                              m, c.secagg_threshold));
  }
  if (!(c.secagg_clip > 0.0) || !std::isfinite(c.secagg_clip) || c.secagg_clip > 1e30) {
    throw t.error("secagg_clip", fmt::format("must be positive, got {}", c.secagg_clip));
  }
  check_range(t, "dp_clip", c.dp_clip, 0.0, 1e30, "at least 0 (0: off)");
  check_range(t, "dp_noise_multiplier", c.dp_noise_multiplier, 0.0, 1e6, "in [0, 1e6]");
  if (!(c.dp_delta > 0.0) || !(c.dp_delta < 1.0)) {
    throw t.error("dp_delta", fmt::format("must be in (0, 1), got {}", c.dp_delta));
  }
  check_range(t, "dp_target_epsilon", c.dp_target_epsilon, 0.0, 1e9, "at least 0 (0: off)");
  if (!c.dp()) {
    if (c.dp_noise_multiplier > 0.0) {
      throw t.error("dp_noise_multiplier", "set dp_clip (S) too: the noise is z S");
    }
    if (c.dp_target_epsilon > 0.0) {
      throw t.error("dp_target_epsilon", "set dp_clip (S) too: DP-FedAvg is off without it");
    }
    return;
  }
  if (c.algorithm == "fedprox" && c.stragglers > 0.0) {
    throw t.error("stragglers",
                  "DP-FedAvg weighs every update alike: partial work is not "
                  "supported with dp_clip");
  }
  if (c.dp_noise_multiplier == 0.0) {
    if (c.dp_target_epsilon == 0.0) {
      throw t.error(z_set ? "dp_noise_multiplier" : "dp_clip",
                    "DP-FedAvg needs dp_noise_multiplier > 0 or dp_target_epsilon to solve it");
    }
    try {
      c.dp_noise_multiplier = privacy::solve_noise_multiplier(c.dp_target_epsilon, c.dp_delta,
                                                              c.dp_sampling_rate(), c.rounds);
    } catch (const UsageError& e) {
      throw t.error("dp_target_epsilon", fmt::format("cannot be reached: {}", e.what()));
    }
  }
}

// Which of the local-training keys the table set.
struct SetKeys {
  bool epochs = false;
  bool batch = false;
  bool mu = false;
};

// The algorithm, the population and the clients' local training.
void check_training(const ConfigTable& t, FlConfig& c, SetKeys set) {
  check_choice(t.lines(), "algorithm", c.algorithm, {"fedavg", "fedsgd", "fedprox"});
  if (c.clients < 1) throw t.error("clients", fmt::format("must be at least 1, got {}", c.clients));
  if (!(c.fraction > 0.0) || c.fraction > 1.0 || !std::isfinite(c.fraction)) {
    throw t.error("fraction", fmt::format("must be in (0, 1], got {}", c.fraction));
  }
  if (c.rounds < 1) throw t.error("rounds", fmt::format("must be at least 1, got {}", c.rounds));
  if (c.local_epochs < 1) {
    throw t.error("local_epochs", fmt::format("must be at least 1, got {}", c.local_epochs));
  }
  if (c.algorithm == "fedsgd") {
    // FedSGD is FedAvg with E = 1 and B = infinity (McMahan et al. 2017, section 2).
    if (set.epochs && c.local_epochs != 1) {
      throw t.error("local_epochs", "fedsgd takes one full-batch step: local_epochs must be 1");
    }
    if (set.batch && c.local_batch != 0) {
      throw t.error("local_batch", "fedsgd uses the whole local data: local_batch must be 0");
    }
    c.local_epochs = 1;
    c.local_batch = 0;
  }
  check_range(t, "proximal_mu", c.proximal_mu, 0.0, 1e6, "in [0, 1e6]");
  if (c.algorithm == "fedprox" && !set.mu) c.proximal_mu = 0.01;
  if (c.algorithm != "fedprox" && c.proximal_mu > 0.0) {
    throw t.error("proximal_mu", "the proximal term is FedProx's: set algorithm = \"fedprox\"");
  }
}

// The server's optimizer and the rounds' settings.
void check_rounds(const ConfigTable& t, const FlConfig& c) {
  const ServerOptimizerConfig& s = c.server_optimizer;
  check_choice(t.lines(), "server_optimizer", s.type,
               {"none", "momentum", "adam", "yogi", "adagrad"});
  check_range(t, "server_lr", s.lr, 0.0, 1e6, "in [0, 1e6]");
  check_range(t, "server_momentum", s.momentum, 0.0, 1.0, "in [0, 1]");
  check_range(t, "server_beta1", s.beta1, 0.0, 1.0, "in [0, 1]");
  check_range(t, "server_beta2", s.beta2, 0.0, 1.0, "in [0, 1]");
  if (!(s.tau > 0.0) || !std::isfinite(s.tau)) {
    throw t.error("server_tau", fmt::format("must be positive, got {}", s.tau));
  }
  if (c.eval_every < 1) {
    throw t.error("eval_every", fmt::format("must be at least 1, got {}", c.eval_every));
  }
  check_range(t, "target_accuracy", c.target_accuracy, 0.0, 1.0, "a fraction in [0, 1]");
  check_range(t, "dropout", c.dropout, 0.0, 1.0, "a fraction in [0, 1]");
  check_range(t, "stragglers", c.stragglers, 0.0, 1.0, "a fraction in [0, 1]");
  check_range(t, "straggler_slowdown", c.straggler_slowdown, 1.0, 1e9, "at least 1");
  if (c.min_fit_clients < 1 || c.min_fit_clients > c.clients_per_round()) {
    throw t.error("min_fit_clients",
                  fmt::format("must be in [1, {}] (the clients per round), got {}",
                              c.clients_per_round(), c.min_fit_clients));
  }
  if (!(c.round_timeout_s > 0.0) || !std::isfinite(c.round_timeout_s)) {
    throw t.error("round_timeout_s", fmt::format("must be positive, got {}", c.round_timeout_s));
  }
  if (c.server.rfind("tcp://", 0) != 0 && c.server.rfind("ipc://", 0) != 0) {
    throw t.error("server", fmt::format("'{}' is not tcp://HOST:PORT or ipc://PATH", c.server));
  }
}

}  // namespace

int64_t FlConfig::clients_per_round() const {
  const auto m = static_cast<int64_t>(std::llround(fraction * static_cast<double>(clients)));
  return std::clamp<int64_t>(m, 1, clients);
}

double FlConfig::dp_sampling_rate() const {
  return static_cast<double>(clients_per_round()) / static_cast<double>(clients);
}

FlConfig read_fl_config(ConfigTable& t) {
  FlConfig c;
  t.read("algorithm", c.algorithm);
  t.read("clients", c.clients);
  t.read("fraction", c.fraction);
  t.read("rounds", c.rounds);
  const bool epochs_set = t.read("local_epochs", c.local_epochs);
  const bool batch_set = t.read("local_batch", c.local_batch);
  const bool mu_set = t.read("proximal_mu", c.proximal_mu);
  ServerOptimizerConfig& s = c.server_optimizer;
  t.read("server_optimizer", s.type);
  t.read("server_lr", s.lr);
  t.read("server_momentum", s.momentum);
  t.read("server_beta1", s.beta1);
  t.read("server_beta2", s.beta2);
  t.read("server_tau", s.tau);
  t.read("eval_every", c.eval_every);
  t.read("target_accuracy", c.target_accuracy);
  t.read("dropout", c.dropout);
  t.read("stragglers", c.stragglers);
  t.read("straggler_slowdown", c.straggler_slowdown);
  t.read("min_fit_clients", c.min_fit_clients);
  t.read("round_timeout_s", c.round_timeout_s);
  t.read("threads", c.threads);
  t.read("checkpoint_every", c.checkpoint_every);
  t.read("server", c.server);
  t.read("client_eval", c.client_eval);
  t.read("secure_aggregation", c.secure_aggregation);
  t.read("secagg_graph", c.secagg_graph);
  t.read("secagg_threshold", c.secagg_threshold);
  t.read("secagg_clip", c.secagg_clip);
  t.read("dp_clip", c.dp_clip);
  const bool z_set = t.read("dp_noise_multiplier", c.dp_noise_multiplier);
  t.read("dp_delta", c.dp_delta);
  t.read("dp_target_epsilon", c.dp_target_epsilon);

  check_training(t, c, {epochs_set, batch_set, mu_set});
  check_rounds(t, c);
  check_privacy(t, c, z_set);
  return c;
}

}  // namespace dtrain::fl
