// ServerOptimizer: how the server turns a round's mean delta into the next
// global model (Reddi et al. 2021, "Adaptive Federated Optimization",
// Algorithm 2; Hsu et al. 2019 for server momentum). With delta the
// weighted mean of w_k - w:
//
//   none      w += lr * delta                      (FedAvg when lr = 1)
//   momentum  v = momentum * v + delta;  w += lr * v          (FedAvgM)
//   adam      m = b1 m + (1 - b1) delta;  v = b2 v + (1 - b2) delta^2
//   yogi      m as adam;  v = v - (1 - b2) delta^2 sign(v - delta^2)
//   adagrad   m as adam;  v = v + delta^2
//             then (adam, yogi, adagrad) w += lr * m / (sqrt(v) + tau)
//
// m starts at zero and v at tau^2 (the paper's initialisation v_{-1} >=
// tau^2); no bias correction, as in the paper.
// Each element is computed in double from the float state and rounded once
// to the float it is stored as.
// State: a StateDict for checkpoints with the tensors "m" (momentum, adam,
// yogi, adagrad) and "v" (adam, yogi, adagrad), 1-D of model_size, and the
// metadata "type", "model_size", "steps" and the hyperparameters "lr",
// "momentum", "beta1", "beta2", "tau" as shortest round-trip text. Loading
// restores the state's hyperparameters (they replace the config's, so a
// resumed server continues bit for bit) and refuses, changing nothing, a
// state of another type or size, a missing or extra tensor, or bad metadata.
// Errors: ConfigError naming "fl.server_optimizer" (or "fl.server_lr" and
// so on) for an unknown type or a value out of read_fl_config's ranges;
// UsageError for spans of the wrong size or a state dict of another type or
// size. Thread safety: none. Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "fl/fl_config.h"
#include "tensor/state_dict.h"

namespace dtrain::fl {

class ServerOptimizer {
 public:
  ServerOptimizer(const ServerOptimizerConfig& config, int64_t model_size);

  // One server step: `weights` (the global model, flat) moves by `delta`.
  void apply(std::span<float> weights, std::span<const float> delta);

  const ServerOptimizerConfig& config() const { return config_; }
  int64_t steps() const { return steps_; }
  StateDict state_dict() const;
  void load_state_dict(const StateDict& state);

 private:
  ServerOptimizerConfig config_;
  int64_t model_size_;
  int64_t steps_ = 0;
  std::vector<float> m_;  // momentum / first moment (empty for none)
  std::vector<float> v_;  // second moment (adam, yogi, adagrad)
};

}  // namespace dtrain::fl
