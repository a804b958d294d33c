// ServerState: what a federated server must keep to continue after a crash,
// and its checkpoint form. A simulation and a deployed server checkpoint the
// same way (io/checkpoint.h: atomic, checksummed): after round r the file
// holds r as its step, the global weights as the 1-D tensor "global", the
// server optimizer's state under "server_optimizer." and the per-run
// counters in the metadata. Client sampling is a pure function of (seed,
// round) (fl/sampling.h), so a resumed server continues with exactly the
// rounds the original would have run.
// Errors: CheckpointError (through io) or UsageError when a checkpoint does
// not hold a server state of `model_size` values, naming what is missing.
// Thread safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "io/checkpoint.h"
#include "tensor/state_dict.h"

namespace dtrain::fl {

struct ServerState {
  int64_t round = 0;           // rounds completed
  std::vector<float> weights;  // the global model, flat (fl/flat_model.h)
  StateDict optimizer;         // ServerOptimizer::state_dict()
  int64_t rejected_updates = 0;
};

io::Checkpoint to_checkpoint(const ServerState& state);
ServerState from_checkpoint(const io::Checkpoint& checkpoint, int64_t model_size);

}  // namespace dtrain::fl
