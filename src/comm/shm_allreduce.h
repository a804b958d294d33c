// ShmAllreduce: allreduce between the processes (or threads) of one host
// through POSIX shared memory, the fast path the Communicator picks when every
// rank runs on the same machine.
//
// Setup: each rank creates a segment "/dtrain-<job_id>-r<rank>" (shm_open +
// ftruncate + mmap) holding a control block (its pid and sequence-numbered
// flags, each on its own cache line) and a data area of `capacity_bytes`,
// then maps every peer's segment (retrying until they exist or the deadline
// passes). Once every rank has mapped every segment, each owner unlinks its
// name, so a crash later leaks nothing; the destructor unlinks it if that
// point was never reached.
//
// One allreduce (per piece of at most capacity_bytes), for n ranks:
// 1. wait until every peer has finished reading this rank's data area from the
//    previous piece (its `done` flag); copy the input into the own data area;
//    publish the piece's descriptor and `arrived = seq` (release).
// 2. wait for every peer's `arrived == seq` (acquire), checking that its
//    descriptor (count, reduction, sequence) equals ours; reduce this rank's
//    share (1/n of the elements) straight out of all n mapped data areas into
//    its own area; publish `reduced = seq`.
// 3. wait for every peer's `reduced == seq`, copy each peer's reduced share
//    into the output; publish `done = seq`.
// Memory traffic per rank: one copy in, one read of n shares of 1/n, one copy
// out; nothing goes through a socket. Every share is reduced on one rank, in
// rank order, so all ranks get bit-identical results.
//
// Waiting spins briefly, then yields, then sleeps in short slices; every
// slice checks the deadline and whether each awaited peer process is alive
// (a pidfd, or kill(pid, 0) where pidfds are missing). A dead peer throws
// CommError naming it; an expired deadline throws TimeoutError naming the
// first rank that did not arrive. Any error leaves the object failed: later
// calls throw CommError.
//
// Ownership: owns its mappings and file descriptors; not copyable.
// Thread safety: one thread at a time. Works for ranks that are processes
// (fork or separate launches) and for ranks that are threads of one process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "core/deadline.h"

namespace dtrain::comm {

struct ShmAllreduceOptions {
  // Unique per job (and per group inside it): names the segments.
  std::string job_id;
  // Data area per rank; larger allreduces are done in pieces of this size.
  size_t capacity_bytes = size_t{16} << 20;
};

class ShmAllreduce {
 public:
  // Collective: every rank of the job constructs one with the same options.
  // Throws CommError when a segment cannot be created or mapped,
  // TimeoutError when a peer's segment does not appear before `deadline`.
  ShmAllreduce(int rank, int size, ShmAllreduceOptions options, Deadline deadline);
  ShmAllreduce(const ShmAllreduce&) = delete;
  ShmAllreduce& operator=(const ShmAllreduce&) = delete;
  ~ShmAllreduce();

  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place. `what` names the operation in errors ("allreduce #7").
  void allreduce(std::span<float> data, ReduceOp op, Deadline deadline,
                 const std::string& what = "shm allreduce");

 private:
  struct Peer {
    std::byte* base = nullptr;  // the mapping of the rank's segment
    int pid = 0;
    int pidfd = -1;
  };
  enum class Flag { kArrived, kReduced, kDone };

  void map_segments(Deadline deadline);
  void await_attached(Deadline deadline);
  void allreduce_piece(std::span<float> data, ReduceOp op, Deadline deadline,
                       const std::string& what);
  // Waits until every peer's `flag` reaches `seq` (or this rank's own is skipped).
  void await_all(Flag flag, uint64_t seq, Deadline deadline, const std::string& what,
                 const std::string& awaited);
  bool peer_alive(const Peer& peer) const;
  uint64_t& flag_word(int rank, Flag flag);
  float* data_area(int rank);
  void unmap_all() noexcept;

  int rank_;
  int size_;
  ShmAllreduceOptions options_;
  size_t segment_bytes_;
  std::vector<Peer> peers_;
  std::vector<std::string> names_;
  bool unlinked_ = false;
  uint64_t seq_ = 0;
  std::string failure_;
};

}  // namespace dtrain::comm
