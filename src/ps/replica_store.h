// ReplicaStore: the backup side of server replication. A server that backs
// up other servers' key ranges (the R servers before it in ring order, see
// replication.h) keeps one copy of each primary's state here and replays the
// primary's ReplicaUpdates on it in order (replication_messages.h): the same
// rows created in the same order, the same optimizer steps with the same
// summed gradients and lr, so the copy stays bit-identical to the primary's
// own state, optimizer buffers and sparse rows included.
//
// A copy starts from a ReplicaState (the primary's whole state) and moves
// from version v to v' only with an update whose base is v; an update it
// already has is acknowledged again (a primary resends when an ack is late),
// anything else is answered kNeedState, and the primary sends its state.
//
// Terms (docs/parameter-server.md "Fencing"): the store keeps the highest
// term it knows per range, raised by the updates and states it takes and by
// raise_term() when this server takes the range over; an update or state of
// an older term is answered kError with the known term in the ack (which
// fences the primary that sent it) and changes nothing.
//
// Thread safety: none (the serving thread of the server that owns it). Never
// blocks. Errors: malformed updates (a table index or a gradient size that
// does not fit the copy) are answered kError and change nothing of that
// update; a state that does not import is answered kError.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "optim/optimizer_config.h"
#include "ps/replication_messages.h"
#include "ps/shard_store.h"
#include "tensor/state_dict.h"

namespace dtrain::ps {

class ReplicaStore {
 public:
  // `server`: the owner's index (named in its acks); rows and optimizers are
  // built as the primaries build theirs (the job's seed and optimizer).
  ReplicaStore(int server, uint64_t seed, optim::OptimizerConfig optimizer);

  ReplicaAck apply(const ReplicaUpdate& update);
  ReplicaAck load(const ReplicaState& state);

  // Whether a copy of `primary`'s state is held, and at which version.
  std::optional<uint64_t> version(uint32_t primary) const;
  // The copy as a ReplicaState (what a replacement of `primary` starts
  // from); nullopt when none is held.
  std::optional<ReplicaState> state(uint32_t primary) const;
  // The newest version any update or state from `primary` named (applied
  // or not): a copy older than it is behind its primary (0 when none came).
  uint64_t newest_seen(uint32_t primary) const;
  // The highest term known for `primary`'s range (0 when none came), and
  // raising it (this server took the range over at `term`).
  uint64_t term(uint32_t primary) const;
  void raise_term(uint32_t primary, uint64_t term);
  // The copy in Server::state_dict()'s layout ("version" in its metadata);
  // empty when none is held.
  StateDict state_dict(uint32_t primary) const;

 private:
  struct Copy {
    uint64_t version = 0;
    std::optional<DenseShard> dense;
    std::vector<SparseTable> tables;
  };
  ReplicaAck ack(uint32_t primary, ReplicaAck::Status status, std::string error = {}) const;
  // Checks every op against the copy before the first one changes it.
  // The kError ack for a frame of `term` below the known one (nullopt, the
  // known term raised to `term`, otherwise).
  std::optional<ReplicaAck> older_term(uint32_t primary, uint64_t term, const char* what);
  static void check_ops(const Copy& copy, const ReplicaUpdate& update);

  int server_;
  uint64_t seed_;
  optim::OptimizerConfig optimizer_;
  std::map<uint32_t, Copy> copies_;
  std::map<uint32_t, uint64_t> newest_seen_;
  std::map<uint32_t, uint64_t> terms_;
};

}  // namespace dtrain::ps
