// PsState, a parameter-server job's whole state independent of S and N, and
// the conversion between it and the servers' own state dicts (the per-server
// layout of shard_store.h):
//   assemble_state: S per-server dicts -> one PsState (dense tensors joined
//     from their slices, optimizer buffers likewise, sparse rows concatenated
//     and sorted by key);
//   split_state: one PsState -> S per-server dicts for the current plan
//     (dense slices cut, sparse rows routed by sparse_server_of()).
// Pure functions. Errors: CommError naming the server whose dict does not fit
// the plan (assemble_state: it came over the wire); UsageError naming the
// missing or misshapen entry (split_state: it came from the caller). Never
// blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ps/sharding.h"
#include "tensor/state_dict.h"

namespace dtrain::ps {

struct PsState {
  uint64_t version = 0;  // the lowest server version
  // "<name>" -> full tensor, in init order (the model's parameters).
  StateDict dense;
  // Optimizer::state_dict() layout over the dense tensors in init order
  // ("state.<i>.<buffer>", metadata "optimizer", "lr", "num_parameters",
  // "state.<i>.step"), so it loads into a local optimizer of the same kind.
  StateDict optimizer;
  // Per table: "<table>.keys" [n, 4] (each uint64 key as four 16-bit limbs,
  // least significant first, exact in float), "<table>.values" [n, D],
  // "<table>.<buffer>" [n, D] per optimizer buffer, "<table>.steps" [n]
  // (the step count of the block each row sat in). Rows sorted by key.
  StateDict sparse;
};

// Where a ps job's state sits in a trainer checkpoint (the "optimizer"
// section that strategy::PsStrategy::optimizer_state() returns): the dense
// optimizer buffers in Optimizer::state_dict layout, the sparse rows under
// "ps.sparse.", the servers' version in metadata "ps.version", and the
// launch that wrote it (its DTRAIN_LAUNCH_ID, when it had one) in "ps.launch".
inline constexpr const char* kCheckpointSparsePrefix = "ps.sparse.";
inline constexpr const char* kCheckpointVersionKey = "ps.version";
inline constexpr const char* kCheckpointLaunchKey = "ps.launch";
// A worker's own state beside it (strategy::PsStrategy: its push
// compressor's residuals and its update count), entries and metadata under
// "compress/": not the servers', so state_from_checkpoint() leaves it out.
inline constexpr const char* kCheckpointCompressPrefix = "compress/";

// A checkpoint's sections as a PsState: dense = the tensors of `model` named
// `dense_names` (init order: the model's dense parameters), optimizer =
// `optimizer` without the "ps.sparse." and "compress/" entries and the "ps."
// and "compress/" metadata, sparse =
// the "ps.sparse." entries (prefix removed), version = metadata "ps.version"
// but at least `min_version` (a checkpoint of another strategy has none).
// UsageError naming a missing tensor or a version that is not a number.
PsState state_from_checkpoint(const StateDict& model, const StateDict& optimizer,
                              const std::vector<std::string>& dense_names, uint64_t min_version);

// `server_states[s]` and `versions[s]` are server s's state dict and version.
PsState assemble_state(const ShardPlan& plan, const std::vector<SparseTableSpec>& tables,
                       const std::vector<StateDict>& server_states,
                       const std::vector<uint64_t>& versions);

// One state dict per server of `plan`, with metadata "version".
std::vector<StateDict> split_state(const ShardPlan& plan,
                                   const std::vector<SparseTableSpec>& tables,
                                   const PsState& state);

}  // namespace dtrain::ps
