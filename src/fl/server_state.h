// ServerState: what a federated server must keep to continue after a crash,
// and its checkpoint form. A simulation and a deployed server checkpoint the
// same way (io/checkpoint.h: atomic, checksummed): after round r the file
// holds r as its step (epoch 0) and one section, "server", with the global
// weights as the 1-D tensor "global" and the server optimizer's state dict
// (tensors and metadata) under "server_optimizer."; the per-run counters
// ("rejected_updates") are the checkpoint's metadata. The section is not
// io::kModelSection: a check_resume() model fingerprint does not apply to it
// (the caller stamps and checks the job name only). Client sampling is a
// pure function of (seed, round) (fl/sampling.h), so a resumed server
// continues with exactly the rounds the original would have run.
// Errors: from_checkpoint throws UsageError "server state (round 7): ..."
// when the checkpoint has no "server" section, no "global" tensor, a tensor
// of the section that is not `model_size` values in one dimension, or no
// valid "rejected_updates"; the optimizer's state is checked when a
// ServerOptimizer loads it. Reading the file is io's (CheckpointError).
// DP-FedAvg's accountant (privacy/rdp_accountant.h) is additive metadata:
// its RdpAccountantState::to_map() under "dp_accountant." (absent: no DP).
// Thread safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"
#include "tensor/state_dict.h"

namespace dtrain::fl {

inline constexpr std::string_view kServerSection = "server";
inline constexpr std::string_view kGlobalTensor = "global";
inline constexpr std::string_view kServerOptimizerPrefix = "server_optimizer.";
inline constexpr std::string_view kRejectedUpdatesKey = "rejected_updates";
inline constexpr std::string_view kAccountantPrefix = "dp_accountant.";

struct ServerState {
  int64_t round = 0;           // rounds completed
  std::vector<float> weights;  // the global model, flat (fl/flat_model.h)
  StateDict optimizer;         // ServerOptimizer::state_dict()
  int64_t rejected_updates = 0;
  // privacy::RdpAccountantState::to_map() of DP-FedAvg's accountant (empty: no DP).
  std::map<std::string, std::string> accountant;
};

io::Checkpoint to_checkpoint(const ServerState& state);
ServerState from_checkpoint(const io::Checkpoint& checkpoint, int64_t model_size);

}  // namespace dtrain::fl
