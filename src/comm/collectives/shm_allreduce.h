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
//    previous piece (its `done` flag); copy the input, except this rank's own
//    share, into the own data area; publish the piece's descriptor and
//    `arrived = seq`.
// 2. wait for every peer's `arrived == seq`, checking that its descriptor
//    (count, reduction, sequence) equals ours; reduce this rank's share (1/n
//    of the elements) from its own input and the n - 1 peers' mapped data
//    areas into its own area; publish `reduced = seq`.
// 3. wait for every peer's `reduced == seq`, copy each peer's reduced share
//    into the output; publish `done = seq`.
// Memory traffic per rank: (n-1)/n of the input copied in, n shares of 1/n
// read, one copy out; nothing goes through a socket. Every share is reduced on one rank, in
// rank order, so all ranks get bit-identical results.
//
// Waiting spins, then yields (ShmWaitPolicy), then sleeps on a futex on the
// awaited flag word (FUTEX_WAIT on its low 32 bits; a publisher calls
// FUTEX_WAKE only when its segment's waiter count is non-zero), in slices of
// at most 2 ms. Every slice checks the deadline, whether the awaited peer
// process is alive (a pidfd, or kill(pid, 0) where pidfds are missing),
// whether it abandoned the allreduce, and what it announced. A dead peer
// throws CommError naming it; an expired deadline throws TimeoutError naming
// the first rank that did not arrive. Any error leaves the object failed:
// later calls throw CommError, and peers waiting on this rank fail at once
// (its `abandoned` word names the culprit).
//
// Mismatch detection: each piece's (count, reduction, sequence) is compared
// on arrival. A communicator also announce()s every collective it starts
// (operation, count, reduction, root, sequence number) in the control block;
// a rank waiting in a shared-memory allreduce compares the awaited peer's
// announcement with its own, so a peer that runs another collective (over
// the transport) is reported naming both sides instead of timing out:
// "allreduce #5 (100 floats, sum) on rank 0 does not match broadcast #5
// (100 floats, root 1) on rank 1".
//
// Ownership: owns its mappings and file descriptors; not copyable.
// Thread safety: one thread at a time. Works for ranks that are processes
// (fork or separate launches) and for ranks that are threads of one process.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "comm/collectives/collective_protocol.h"
#include "comm/collectives/collectives.h"
#include "core/deadline.h"

namespace dtrain::comm {

// How a rank waits for a peer's flag before it sleeps on the futex: spin
// (pause instructions: the peer runs on another core and is about to
// publish), then sched_yield() (the peer may be waiting for this core, which
// the yield hands over at once). The defaults were the fastest measured on a
// 2-core host with 2 and 4 ranks beside other load (bench/comm/
// allreduce_bench's tuning arguments): spinning at all cost more than it
// saved there, because the awaited rank was usually not running.
struct ShmWaitPolicy {
  std::chrono::nanoseconds spin{0};
  std::chrono::nanoseconds yield = std::chrono::microseconds(500);
};

struct ShmAllreduceOptions {
  // Unique per job (and per group inside it): names the segments.
  std::string job_id;
  // Data area per rank; larger allreduces are done in pieces of this size.
  size_t capacity_bytes = size_t{16} << 20;
  ShmWaitPolicy wait_policy;
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

  // Publishes the collective this rank starts now (every collective of the
  // owning communicator, whichever path it takes). Never blocks.
  void announce(const OpDescriptor& op);
  // Marks this rank failed (naming `culprit`, -1 if unknown) and wakes peers
  // sleeping on it: their waits throw CommError naming the culprit. Called on
  // any failure of the allreduce and by the communicator when another
  // collective or its transport fails, so a peer in the shared-memory path
  // learns the cause. This rank's own waits in progress (on any thread) and
  // later ones throw CommError naming the culprit with `reason` within one
  // wait slice (2 ms). Thread-safe.
  void abandon(int culprit, const std::string& reason = {}) noexcept;

 private:
  // Throws CommError when abandon() ran on this rank.
  void check_abandoned(const std::string& what) const;

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
  // Stores the flag, then wakes sleepers if any are registered.
  void publish(Flag flag, uint64_t seq);
  // `rank`'s announcement, or nullopt if none yet or it is being rewritten.
  std::optional<OpDescriptor> announced_by(int rank);
  // Throws CommError when peer `q`, whose `word` has not reached `seq`, runs
  // a collective other than this rank's.
  void check_announcement(int q, std::atomic_ref<uint64_t> word, uint64_t seq,
                          const std::string& what);
  bool peer_alive(const Peer& peer) const;
  uint64_t& flag_word(int rank, Flag flag);
  float* data_area(int rank);
  void unmap_all() noexcept;

  int rank_;
  int size_;
  ShmAllreduceOptions options_;
  size_t segment_bytes_;
  std::vector<Peer> peers_;
  ShmWaitPolicy wait_policy_;
  mutable std::mutex abandon_mutex_;  // guards the two below
  int abandoned_culprit_ = -1;
  std::string abandoned_reason_;  // empty until abandon() ran
  std::atomic<bool> abandoned_{false};
  std::vector<std::string> names_;
  bool unlinked_ = false;
  uint64_t seq_ = 0;
  std::optional<OpDescriptor> announced_;  // this rank's last announce()
  std::string failure_;
};

}  // namespace dtrain::comm
