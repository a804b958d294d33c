// Communicator: dtrain's native collectives on float32 buffers over a
// Transport (comm/transport/transport.h), the object a strategy uses to average
// gradients and broadcast weights.
//
// Algorithms (docs/collectives.md has the phases and the bytes per rank):
// allreduce uses recursive halving-doubling up to `small_allreduce_bytes`
// (at power-of-two worlds above two ranks, pipelined, up to
// `pow2_halving_doubling_bytes`) and the pipelined ring above it, or shared memory when every rank
// runs on this host (see shm_allreduce.h); broadcast a binomial tree; allgather, allgatherv and
// reduce_scatter the ring; barrier dissemination; allreduce16 the ring with 16-bit messages
// (ring_collectives.h); sparse_allreduce SparCML's sparse ring (sparse_collectives.h).
//
// Contract:
// - Every rank calls the same collectives in the same order with agreeing
//   arguments. Each message carries (operation, count, dtype, sequence number,
//   root); a rank that receives one disagreeing with what it executes throws
//   CommError naming both sides ("allreduce #12 (1000 floats, sum) on rank 0
//   does not match broadcast #12 (10 floats, root 1) from rank 1") and tells
//   its peers, whose pending calls fail with that reason. On the
//   shared-memory path every collective is announced in the rank's control
//   block, so a shared-memory allreduce facing another collective fails
//   naming both sides too. Limit: a broadcast whose every rank thinks it is
//   the root receives nothing and so detects nothing.
// - Each call is bounded by `timeout`: TimeoutError names the peer awaited;
//   a dead peer gives CommError naming it.
// - Failure propagates: the rank that detects it aborts the transport
//   (Transport::abort), so every rank's pending call fails at once with a
//   CommError naming the same culprit (the dead, silent or disagreeing rank)
//   rather than the neighbour it happened to wait on.
// - After any CommError (including TimeoutError) the communicator is failed:
//   queued asynchronous work completes with a CommError and every later call
//   throws CommError ("communicator failed earlier: ..."). Its owner builds a
//   new one over a new transport.
// - Local argument errors throw UsageError before anything is sent and leave
//   the communicator usable.
//
// Asynchronous work: allreduce_async() and submit() queue work on this
// communicator's background thread (one std::jthread, stopped and joined by
// the destructor) and return a Work handle; work runs in call order, and a
// blocking call from the caller's thread first waits for queued work to
// finish. A blocking call made on the background thread itself (inside a
// submitted body) runs at once, inline. Sequence numbers are assigned when
// an operation executes, in execution order, on whichever thread runs it:
// ranks that interleave allreduce_async, submit and blocking calls alike
// number their operations alike. The buffer must stay alive and untouched
// until the Work completes. Destroying the communicator fails work that has
// not started with CommError and waits for the running one (bounded by its
// timeout).
//
// Bytes: bytes_sent() counts what this communicator's collectives and
// point-to-point calls handed to the transport (32-byte headers included).
// A shared-memory allreduce sends nothing through the transport; it counts
// what the ring would have sent, 2(n-1)/n of the buffer, so that the
// counter compares algorithms and compressions, not paths.
//
// Sub-groups: split() and subgroup() return communicators over a subset of the
// ranks, on their own tag range, so their messages never mix with the
// parent's or each other's. The parent must outlive them.
//
// Ownership: owns its worker thread and, when given one by unique_ptr, the
// transport; otherwise the transport must outlive the communicator.
// Thread safety: call the API from one thread at a time; Work handles may be
// waited on from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "comm/collectives/collective_protocol.h"
#include "comm/collectives/collectives.h"
#include "comm/collectives/shm_allreduce.h"
#include "comm/transport/transport.h"
#include "core/deadline.h"
#include "core/trace.h"

namespace dtrain::comm {

struct CommunicatorOptions {
  // Bound on each collective, from the moment it starts executing.
  std::chrono::milliseconds timeout{30000};
  // Pipelining unit of the ring, the broadcast tree and allgather: one
  // message per chunk.
  size_t chunk_bytes = size_t{256} << 10;
  // How far the ring's sends may run ahead of its receives, in bytes
  // (rounded down to whole chunks, at least one). A window that fits the
  // links' socket buffers keeps every send a write straight from the
  // caller's memory (ring_collectives.h); a larger one makes a transport
  // copy what the socket cannot take yet, to write it later.
  size_t ring_window_bytes = size_t{1} << 20;
  // Allreduces of at most this many bytes use halving-doubling, larger ones
  // the ring.
  size_t small_allreduce_bytes = size_t{64} << 10;
  // With a power-of-two number of ranks above two, allreduces of at most
  // this many bytes use halving-doubling at every size, pipelined in
  // chunk_bytes with the ring's window (halving_doubling.h): 2 log2(n)
  // latency-bound rounds instead of the ring's 2(n-1), the same bytes
  // (docs/collectives.md, "Halving-doubling at powers of two").
  size_t pow2_halving_doubling_bytes = ~size_t{0};
  // Between two ranks, allreduces of at most this many bytes (whatever
  // small_allreduce_bytes says) are one exchange of the whole buffer
  // (recursive_doubling.h): the ring's bytes in one round instead of two.
  // Above 64 KiB it measured slower here (each rank combines the whole
  // buffer instead of half; docs/collectives.md).
  size_t pair_exchange_bytes = size_t{64} << 10;
  // Between two ranks, ring allreduces of at most pair_chunk_max_bytes are
  // pipelined in pair_chunk_bytes instead of chunk_bytes (the window stays
  // ring_window_bytes, rounded down to whole chunks): at 1 MiB each rank's
  // half is one frame per step instead of two, so half the frames, MACs,
  // sendmsg calls and wake-ups; measured 19-23 % less CPU per call and
  // 1.01-1.14x the speed under load (docs/collectives.md, "Issue 16, ninth
  // round"). Nothing was shown above 2 MiB, so larger allreduces keep
  // chunk_bytes. 0 turns it off.
  size_t pair_chunk_bytes = size_t{512} << 10;
  size_t pair_chunk_max_bytes = size_t{2} << 20;
  // Use shared memory for allreduce when every rank is on this host. Needs a
  // non-empty `job_id`; construction then exchanges host identities and sets
  // the segments up (collective). Never used over a transport with an
  // emulated slow link (Transport::link_shaped(), ZmqTransportOptions::link
  // set on any rank): shared memory included, nothing escapes the limiter.
  bool shm_allreduce = true;
  // Unique per job; names the shared-memory segments. Empty disables them.
  std::string job_id;
  // Data area per rank of the shared-memory path.
  size_t shm_capacity_bytes = size_t{16} << 20;
  // Tag range of this communicator (bits 32..63 of every tag). Sub-groups
  // derive theirs from it.
  uint32_t group_id = 1;
};

// Completion of an asynchronous operation.
class Work {
 public:
  Work() = default;
  explicit Work(std::shared_future<void> done) : done_(std::move(done)) {}

  // Blocks until the operation completes; rethrows its error (CommError,
  // TimeoutError). Throws TimeoutError (peer -1) if `deadline` passes first;
  // the operation then continues in the background.
  void wait(Deadline deadline) const;
  bool is_completed() const;

 private:
  std::shared_future<void> done_;
};

class Communicator final : public Collectives {
 public:
  // `transport` must outlive the communicator.
  explicit Communicator(Transport& transport, CommunicatorOptions options = {});
  explicit Communicator(std::unique_ptr<Transport> transport, CommunicatorOptions options = {});
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator() override;

  int rank() const override { return transport_.rank(); }
  int size() const override { return transport_.size(); }
  const CommunicatorOptions& options() const { return options_; }
  // Whether allreduce goes through shared memory.
  bool uses_shm() const { return shm_ != nullptr; }
  bool failed() const;

  void allreduce(std::span<float> data, ReduceOp op) override;
  void broadcast(std::span<float> data, int root) override;
  void allgather(std::span<const float> mine, std::span<float> out) override;
  void allgatherv(std::span<const float> mine, std::span<float> out,
                  std::span<const size_t> counts) override;
  void reduce_scatter(std::span<const float> input, std::span<float> output, ReduceOp op) override;
  void barrier() override;

  // Queues an in-place allreduce; `data` must stay valid until completion.
  Work allreduce_async(std::span<float> data, ReduceOp op);

  // Queues `body` on the background thread, in call order with the other
  // queued work; `what` names it in errors. Inside `body` the blocking
  // collectives of this communicator (allreduce, allgather, allreduce16,
  // allgather_bytes, sparse_allreduce, ...) run inline on that thread, each
  // with its own sequence number and deadline; the submission itself takes
  // no sequence number. `body` must not wait() for Work of this
  // communicator (that work runs after it: deadlock until the Work's
  // deadline). A CommError out of `body` fails the communicator like any
  // collective's; another exception only completes the Work with it. On a
  // failed communicator the body does not run and the Work fails.
  Work submit(std::string what, std::function<void()> body);

  // In place: the sum over the ranks, every message carrying 16-bit values
  // (bf16, or fp16 with a float32 scale per message so that nothing
  // overflows), accumulated in float32; every rank ends bit-identical.
  // Always through the transport (the shared-memory path is float32 only).
  // Precision: each value is rounded to 16 bits (relative 2^-9 for bf16,
  // 2^-11 of the message's largest magnitude for fp16) at each of the n-1
  // reduce-scatter hops and once in the allgather.
  void allreduce16(std::span<float> data, bool bf16);

  // Every rank's `mine` (sizes may differ), in rank order: an allgather of
  // the u64 sizes, then the ring allgatherv of the bytes (two operations,
  // two sequence numbers). UsageError for `mine` over kMaxGatherBytes;
  // CommError naming the rank whose announced size exceeds it.
  std::vector<std::vector<std::byte>> allgather_bytes(std::span<const std::byte> mine);
  static constexpr uint64_t kMaxGatherBytes = uint64_t{1} << 30;

  // out (dense, out.size() == n, the same n on every rank) = the sum over
  // the ranks of each rank's sparse vector (indices strictly increasing and
  // < n, values finite, one per index: UsageError otherwise, before
  // anything is sent). SparCML's sparse ring (sparse_collectives.h): bytes
  // per rank at most about a dense ring allreduce's, far less for sparse
  // inputs. A peer's malformed message throws CommError naming it; `out` is
  // written only once everything arrived, so a failure leaves it untouched.
  void sparse_allreduce(std::span<const uint32_t> indices, std::span<const float> values,
                        std::span<float> out);

  // Records each collective as it executes (a "comm" span on the executing
  // thread: the worker's track for asynchronous ones, named "comm") into
  // `sink`, or nothing when null. `sink` must outlive this communicator or be
  // reset to null first; set it while no operation is in flight.
  void set_trace(TraceSink* sink);

  // Payload and header bytes handed to the transport so far (see above).
  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }

  // Point to point, outside the collective sequence. `tag` (< 2^31) keeps
  // independent streams apart; recv() needs exactly data.size() floats.
  void send(int peer, std::span<const float> data, uint32_t tag = 0);
  void recv(int peer, std::span<float> data, uint32_t tag = 0);
  void send_bytes(int peer, std::span<const std::byte> data, uint32_t tag = 0);
  std::vector<std::byte> recv_bytes(int peer, uint32_t tag = 0);

  // Collective over this communicator: ranks passing the same `color` form a
  // group, ordered by (key, rank). Returns nullptr for color < 0.
  std::unique_ptr<Communicator> split(int color, int key);
  // Every rank of this communicator calls it with the same list, in the same
  // order relative to other subgroup() calls; `ranks[i]` becomes rank i.
  // Returns nullptr on ranks outside the list. Sends nothing.
  std::unique_ptr<Communicator> subgroup(const std::vector<int>& ranks);

 private:
  struct Task {
    std::function<void()> run;
    std::promise<void> done;
    std::string what;
  };
  using OpBody = std::function<void(const OpDescriptor&, Deadline)>;

  // Both constructors' common part: checks options_, sets up shared memory
  // and the worker thread.
  void start();
  void set_up_shm();
  void listen_to_transport();
  // An operation's descriptor, its sequence number still 0: run_collective
  // assigns it when the operation executes.
  static OpDescriptor make_op(OpKind kind, uint64_t count, ReduceOp reduce = ReduceOp::kSum,
                              int root = -1, Dtype dtype = Dtype::kFloat32);
  // Gives `op` the next sequence number and runs `body` like run_blocking.
  void run_collective(OpDescriptor op, const OpBody& body);
  Work enqueue(std::string what, std::function<void()> run);
  bool on_worker_thread() const { return std::this_thread::get_id() == worker_.get_id(); }
  CollectiveChannel open_channel(const OpDescriptor& desc, Deadline deadline) {
    return CollectiveChannel(transport_, collective_tag(), desc, deadline, &bytes_sent_);
  }
  uint64_t collective_tag() const { return uint64_t{options_.group_id} << 32; }
  uint64_t p2p_tag(uint32_t tag) const;
  // Runs `body` on this thread, recording failure: at once on the worker
  // thread, else once queued work is done.
  void run_blocking(const std::string& what, const std::function<void(Deadline)>& body);
  void execute(const std::string& what, const std::function<void(Deadline)>& body);
  void throw_if_failed(const std::string& what) const;
  void worker_loop(std::stop_token stop);
  // Publishes `desc` to the shared-memory peers (mismatch detection there).
  void announce(const OpDescriptor& desc);
  void allreduce_now(std::span<float> data, ReduceOp op, const OpDescriptor& desc,
                     Deadline deadline);
  void allgatherv_bytes(std::span<const std::byte> mine, std::span<std::byte> out,
                        std::span<const size_t> byte_counts, const OpDescriptor& desc,
                        Deadline deadline);
  std::unique_ptr<Communicator> make_child(std::vector<int> members, uint32_t group_id);

  std::unique_ptr<Transport> owned_transport_;
  Transport& transport_;  // *owned_transport_ or the caller's
  CommunicatorOptions options_;
  std::unique_ptr<ShmAllreduce> shm_;
  // Only the thread executing an operation touches it: the caller's while
  // the queue is idle, the worker's while it runs work (the queue mutex
  // orders the two).
  uint64_t next_seq_ = 1;
  std::atomic<uint64_t> bytes_sent_{0};
  uint64_t children_made_ = 0;
  std::atomic<TraceSink*> trace_{nullptr};

  mutable std::mutex failure_mutex_;
  std::string failure_;  // non-empty once failed
  int failure_peer_ = -1;

  std::mutex queue_mutex_;
  std::condition_variable_any queue_changed_;
  std::deque<Task> queue_;
  bool busy_ = false;
  std::jthread worker_;  // last: stopped and joined before the members above go
};

}  // namespace dtrain::comm
