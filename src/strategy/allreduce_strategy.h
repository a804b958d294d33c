// AllReduceStrategy: synchronous data parallelism with one process per
// worker, averaging gradients by allreduce (PyTorch DDP, Horovod). Every
// worker holds a full replica; the replicas stay bit-identical because every
// worker applies the same optimizer update to the same averaged gradient.
//
// Construction: rank 0 broadcasts its parameters and buffers (one broadcast),
// so workers whose models were initialised differently start identical.
//
// A step (docs/allreduce-strategy.md has the details and the bytes):
//  1. forward on this worker's share of the global batch (n_i rows, possibly
//     0), loss = mean loss * n_i (the SUM loss), backward;
//  2. during backward, the gradient-ready hook of each parameter copies its
//     gradient into a bucket of the CoalescingBucketer; a full bucket starts
//     an asynchronous allreduce (sum) while backward continues, buckets
//     strictly in index order on every rank;
//  3. after backward: parameters that got no gradient are marked absent (a
//     zero slot), the remaining buckets are launched, all are awaited;
//  4. bucket 0 also carries (n_i, loss sum, correct) in three header floats,
//     so sum_i n_i arrives with the gradients; each averaged gradient is
//     sum_i n_i g_i / sum_i n_i, written back to the parameter, and the
//     optimizer steps. A parameter that no worker had a gradient for gets
//     none (the optimizer skips it, as LocalStrategy would).
//  5. overlapped update (options.overlap_update, the default): the update
//     of step 4 runs bucket by bucket in completion order (bucket 0 first,
//     with the header), each bucket's parameters averaged, checked finite
//     and stepped while the later buckets are still reducing, so the last
//     buckets' allreduce hides the optimizer step of the earlier ones. The
//     weights and optimizer state are bit-identical to one step after all
//     buckets (nn::Optimizer::step(indices) runs each parameter's update by
//     the same code). The guarantee that a NaN or infinity in any averaged
//     gradient throws NumericError before any weight changes is kept by
//     undoing: every bucket but the last is stepped tentatively (its
//     parameters' values and optimizer state copied aside first); when a
//     later bucket is non-finite, the tentative steps are put back bit for
//     bit, the remaining buckets still awaited, and NumericError thrown as
//     before. Every worker holds the same sums, so all undo alike. The copy
//     is the price (it runs while the last bucket reduces); a flag summed in
//     a header cannot replace it, since bucket 0 leaves during backward,
//     before the local gradients of the later buckets exist, and a sum of
//     finite values can still overflow. Falls back to step 4 (every bucket
//     awaited, then one step) where the update needs every gradient first
//     or nothing can overlap: the blocking mode (no asynchronous
//     allreduce), passes through compressed buckets (error feedback and the
//     compressor's decode), step_on_gradients() (DP-SGD's clipped and noised
//     sums, scaled as a whole), local SGD (its own update), and a single
//     bucket. Gradient accumulation, join and dynamic batch sizing overlap:
//     their weighting is in the sums and bucket 0's header.
//
// Join (uneven shards): a worker with n_i = 0 runs no forward or backward but
// joins every allreduce with zeros and weight 0, so it never hangs the
// others. When every worker has 0 rows, no update happens.
//
// Caller-computed gradients (step_on_gradients(), strategy.h; DP-SGD): the
// caller fills this worker's gradients with the hooks disarmed; then every
// parameter is marked ready in index order (zeros where none arrived), the
// same buckets leave as in a step (bucket 0's header carries the caller's
// statistics), and each parameter's gradient becomes the plain sum times the
// caller's scale, with no division by the samples: an update happens even
// when no worker had rows. Refused (UsageError) with accumulation, compression,
// local SGD or dynamic batch sizing.
//
// Gradient accumulation: with accumulation_steps = k, train_step() is called
// k times per update. Calls 1..k-1 only accumulate gradients locally (hooks
// do not launch, nothing is sent); call k communicates and updates. The
// interface is unchanged: train_step() returns THIS worker's statistics for
// its own call; updated() says whether that call applied an update, and
// global_stats() holds the statistics of the last update summed over every
// worker and micro-batch (carried in bucket 0's header at no extra message).
//
// Dynamic batch sizing (options.dynamic_batch, docs/allreduce-strategy.md):
// each worker measures its compute time (forward and backward, slowdown
// included) and, at the next update, puts the previous update's rows and
// seconds per train_step() call into slots kHeaderFloats + rank and
// kHeaderFloats + W + rank of bucket 0's header, 2W floats more; the
// allreduce sums them, so every worker observes every worker's measurement
// at no extra message (one update late: bucket 0 leaves during backward,
// before this window's time is known). A BatchBalancer fits each worker's
// affine step-time model to them and splits identically on every worker;
// batch_split() reports the split and the trainer slices the global batch
// with it. Shares are runtime state, not checkpointed: a resumed run
// starts from equal shares.
//
// The compute time of a call is accounted through the Strategy's
// ComputeTimer (strategy/compute_timer.h): a slowdown or a modelled time for
// tests and benchmarks.
//
// Row-sparse gradients (embedding tables) are folded to dense before packing:
// the allreduce moves whole tables. The parameter-server strategy handles
// sparse gradients natively.
//
// Compression (options.compression, docs/compression.md): after
// compression.start_step dense updates, buckets holding a compressed
// parameter are reduced by a CompressedReducer (strategy/compressed_reducer.h)
// on the communicator's thread, still while backward goes on; the others keep
// the plain allreduce. With compression.local_steps = H > 1 (post-local SGD)
// each worker instead applies its own gradient (its rows' mean) for H
// updates, and at every H-th update the workers' parameters and buffers are
// averaged (one allreduce, which also carries the statistics); the updates
// in between send nothing and report this worker's statistics only. The
// compressor's state (residuals, PowerSGD's Q) is each worker's
// rank_state(), the run's update count (which fixes the random draws) goes
// with optimizer_state(), so a resumed run continues bit-identically; a
// state written by another number of workers is dropped with a warning. Method none and local_steps
// 1 take exactly the dense path. Compression needs the overlapping mode
// (UsageError over other backends).
//
// Buffers (BatchNorm running statistics) would drift apart since each worker
// sees other batches; with broadcast_buffers (the default, as in DDP) rank 0
// broadcasts them after every update (one broadcast, only when the model has
// buffers).
//
// Two modes:
//  - over a comm::Communicator: buckets are allreduced asynchronously during
//    backward (allreduce_async), overlap_stats() reports how much;
//  - over any comm::Collectives (the MPI backend, or a Communicator passed as
//    Collectives&): buckets are allreduced one after another, blocking, after
//    backward; same results, no overlap.
//
// Errors: UsageError for batches whose rows and targets differ, and for bad
// options. A CommError (TimeoutError included) from the communicator
// propagates out of train_step() unchanged (it names the peer and the
// operation); if the strategy's own deadline for the step's allreduces
// passes first, TimeoutError (peer -1) names the bucket awaited. After any
// CommError the strategy is failed: every later train_step() and
// sync_replicas() throws CommError "allreduce strategy failed earlier: ...";
// its owner rebuilds communicator and strategy (ft restores the checkpoint).
// An error on one worker alone (a bad batch) leaves its peers waiting in the
// collective until their deadline.
//
// Ownership: owns the model, optimizer and bucket buffers. The communicator
// (or collectives) is borrowed and must outlive the strategy: the destructor
// waits for allreduces still in flight on the bucket buffers (each is bounded
// by the communicator's own timeout) and removes its hooks from the
// parameters.
// Thread safety: one thread calls the strategy at a time (the hooks run on
// that thread, inside backward()); the communicator's worker thread touches
// only launched buckets.
// Blocking: construction, train_step() on the communicating call and
// sync_replicas() block on collectives, bounded by `timeout` and the
// communicator's own timeout.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/collectives/collectives.h"
#include "comm/collectives/communicator.h"
#include "core/log.h"
#include "strategy/batch_balancer.h"
#include "strategy/coalescing_bucketer.h"
#include "strategy/compressed_reducer.h"
#include "strategy/compression.h"
#include "strategy/strategy.h"

namespace dtrain::strategy {

struct AllReduceOptions {
  // Gradient bytes per bucket: larger buckets mean fewer messages, smaller
  // ones more overlap. 0 puts each parameter in a bucket of its own. DDP's
  // default is 25 MiB, for models of hundreds of MiB.
  size_t bucket_bytes = size_t{1} << 20;
  // Gradient bytes of the first bucket (PyTorch DDP's first_bucket_bytes),
  // capped at bucket_bytes: the first gradients backward finishes (the last
  // layers) close it early, so its allreduce starts while backward goes on.
  // Without it a model smaller than bucket_bytes (LeNet-5: 244 KB) is one
  // bucket launched by the last hook, and nothing overlaps. 64 KiB holds
  // LeNet-5's two last layers (44 KB), leaving fc1 and the convolutions'
  // backward to hide its allreduce behind (docs/performance.md).
  size_t first_bucket_bytes = size_t{64} << 10;
  // Gradient bytes of the last bucket, when the layout above makes it larger
  // (and it is not bucket 0): the last hook of backward launches it, so
  // nothing hides its allreduce; its tail (the gradients backward finishes
  // last) then gets a bucket of its own of at most this size, and the rest
  // leaves as soon as it is ready. LeNet-5: fc1's weight (188 KiB) no longer
  // waits in one bucket with both convolutions, which backward finishes
  // last; the bucket left for the end holds their 10 KB. No effect at or
  // above bucket_bytes.
  size_t last_bucket_bytes = size_t{64} << 10;
  // A short scheduler slice for the communicator's thread
  // (strategy/scheduler_slice.h), requested once at construction: with one
  // worker process per core, a bucket launched during backward then starts
  // at once instead of after the backward thread's slice (measured: not
  // before backward ended). 0 leaves the thread as it is. The thread keeps
  // it after the strategy is gone.
  std::chrono::microseconds comm_thread_slice{100};
  // Micro-batches per update (>= 1).
  int64_t accumulation_steps = 1;
  // Bound on waiting, after backward, for all of a step's allreduces
  // (overlapping mode; blocking calls are bounded by the backend's timeout).
  std::chrono::milliseconds timeout{60000};
  // Rank 0 broadcasts the buffers after every update (models with buffers).
  bool broadcast_buffers = true;
  // Dynamic batch sizing (off by default: the static split).
  BatchBalancerOptions dynamic_batch;
  // Compression and local SGD (off by default: dense).
  CompressionSettings compression;
  // Step each bucket's parameters as soon as its allreduce completed (step
  // 5 above); false: one optimizer step after every bucket.
  bool overlap_update = true;
  // Where warnings go (a dropped compressor state); may be null.
  Logger* logger = nullptr;
  // Timeline (core/trace.h): forward, backward (per autograd node), each
  // bucket's allreduce from launch to observed completion (async "bucket"
  // spans; the communicator's thread records the execution itself), the wait
  // before the update and the update; the clock offset to rank 0 is measured
  // at construction. Null: off. Must outlive the strategy.
  TraceSink* trace = nullptr;
};

// How much of the last update's communication hid behind backward
// (overlapping mode; in blocking mode nothing hides and wait_s is all of it).
struct OverlapStats {
  int64_t buckets = 0;
  // Buckets whose allreduce was launched before backward() returned.
  int64_t launched_in_backward = 0;
  double backward_s = 0.0;
  // Time blocked after backward until every bucket's allreduce completed
  // (launching the remaining buckets included, the buckets' updates in
  // between excluded): the exposed communication.
  double wait_s = 0.0;
  // Execution time of the allreduces. Measured (measured_execution) when
  // every bucket went dense through dtrain's communicator: the sum over
  // buckets of the time its allreduce ran on the communicator's thread, from
  // the start of its execution to its end, queueing excluded. Otherwise
  // (compressed buckets, the blocking mode) estimated: the sum over buckets
  // of (completion - max(launch, previous bucket's completion)), completions
  // observed by polling at every gradient-ready hook and while waiting, which
  // counts a bucket's wait in the queue as execution.
  double allreduce_s = 0.0;
  bool measured_execution = false;
  // Measured only: the part of allreduce_s that ran before backward()
  // returned.
  double hidden_s = 0.0;
  // Whether the update ran bucket by bucket (AllReduceOptions::
  // overlap_update and none of its fallbacks).
  bool update_by_bucket = false;
  // The update after the allreduces: averaging, finiteness check, the
  // tentative steps' copies and the optimizer step, summed over buckets (or
  // the one step's, when not by bucket).
  double update_s = 0.0;
  // The part of update_s that ran before the last bucket's allreduce ended
  // (its execution's end when measured, its observed completion otherwise):
  // the update hidden behind communication. 0 when not by bucket.
  double update_hidden_s = 0.0;
  // Buckets whose tentative step was undone because a later bucket's
  // averaged gradient was not finite.
  int64_t buckets_undone = 0;

  // The share of allreduce time hidden behind backward, in [0, 1]: measured,
  // hidden_s / allreduce_s; estimated, 1 - wait_s / allreduce_s.
  double hidden_share() const {
    if (allreduce_s <= 0.0) return 0.0;
    const double hidden = measured_execution ? hidden_s / allreduce_s : 1.0 - wait_s / allreduce_s;
    return hidden < 0.0 ? 0.0 : (hidden > 1.0 ? 1.0 : hidden);
  }
  // The share of the update hidden behind the allreduces, in [0, 1].
  double update_hidden_share() const {
    if (update_s <= 0.0) return 0.0;
    return std::min(1.0, update_hidden_s / update_s);
  }
};

class AllReduceStrategy : public Strategy {
 public:
  // Overlapping mode. `comm` must outlive the strategy.
  AllReduceStrategy(std::unique_ptr<nn::Module> model, const OptimizerFactory& make_optimizer,
                    comm::Communicator& comm, AllReduceOptions options = {},
                    LossFn loss = cross_entropy_loss());
  // Blocking mode over any backend. `collectives` must outlive the strategy.
  AllReduceStrategy(std::unique_ptr<nn::Module> model, const OptimizerFactory& make_optimizer,
                    comm::Collectives& collectives, AllReduceOptions options = {},
                    LossFn loss = cross_entropy_loss());
  ~AllReduceStrategy() override;
  AllReduceStrategy(const AllReduceStrategy&) = delete;
  AllReduceStrategy& operator=(const AllReduceStrategy&) = delete;

  std::string name() const override { return "allreduce"; }
  // One replica per worker of the group.
  int64_t replicas() const override { return collectives_.size(); }
  nn::Module& model() override { return *model_; }
  nn::Optimizer& optimizer() { return *optimizer_; }
  void set_learning_rate(float lr) override { optimizer_->set_lr(lr); }
  // The optimizer's state (and, with compression, the run's update count
  // and the guard's level); this worker's compressor state is its
  // rank_state().
  StateDict optimizer_state() override;
  void load_optimizer_state(const StateDict& state) override;
  StateDict rank_state() const override;
  void load_rank_state(const std::optional<StateDict>& state) override;
  // `inputs` [n_i, ...] and n_i targets: this worker's share (n_i may be 0;
  // `inputs` may then be undefined). Collective on the communicating call:
  // every worker calls it the same number of times.
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  // Collective (strategy.h): the workers' gradients summed by the same
  // buckets and allreduces as train_step() (either mode), statistics summed
  // in bucket 0's header. UsageError with accumulation_steps > 1,
  // compression or local SGD, or dynamic batch sizing.
  bool sums_gradients() const override { return true; }
  StepStats step_on_gradients(const std::function<StepStats()>& local_gradients,
                              float scale) override;
  // Collective: rank 0 broadcasts parameters and buffers again (after a
  // checkpoint load). Optimizer state is not sent: every worker loads the
  // same checkpoint. Also restarts a partial accumulation window.
  void sync_replicas() override;

  const AllReduceOptions& options() const { return options_; }
  int64_t rank() const override { return collectives_.rank(); }
  int64_t world_size() const override { return collectives_.size(); }
  int64_t accumulation_steps() const override { return options_.accumulation_steps; }
  // The balancer's split (the static one until shares change).
  std::vector<int64_t> batch_split(int64_t batch_rows) const override {
    return balancer_.split(batch_rows);
  }
  // The shares every worker uses; set_shares() on every worker alike forces
  // a split (tests), observe() is the strategy's own.
  BatchBalancer& batch_balancer() { return balancer_; }
  const BatchBalancer& batch_balancer() const { return balancer_; }
  // This worker's throughput over the last update's window (rows per second
  // of forward and backward, slowdown included); 0 without rows.
  double compute_samples_per_s() const {
    return last_call_seconds_ > 0.0 ? last_call_rows_ / last_call_seconds_ : 0.0;
  }
  // The update's statistics over all workers once an update happened.
  StepStats step_totals(const StepStats& local) const override {
    return updated_ ? global_stats_ : local;
  }
  // Whether the last train_step() applied an update.
  bool updated() const { return updated_; }
  // Updates applied so far.
  int64_t updates() const { return updates_; }
  // The last update's statistics over every worker and micro-batch.
  const StepStats& global_stats() const { return global_stats_; }
  const OverlapStats& overlap_stats() const { return overlap_; }
  size_t bucket_count() const { return bucketer_->bucket_count(); }
  // Floats per update on the wire of each allreduce, summed over buckets.
  size_t floats_per_update() const;
  bool failed() const { return !failure_.empty(); }

  CommStats last_comm() const override { return last_comm_; }
  bool reduces_communication() const override { return options_.compression.active(); }
  void set_communication_level(int level) override;
  std::string communication() const override { return settings_.describe(); }
  // The compressor in use (nullptr: none, or not started building).
  const compress::Compressor* compressor() const {
    return reducer_ ? &reducer_->compressor() : nullptr;
  }

 protected:
  // Overlapping mode when `async` is non-null (the same object as
  // `collectives`), blocking mode otherwise.
  AllReduceStrategy(std::unique_ptr<nn::Module> model, const OptimizerFactory& make_optimizer,
                    comm::Collectives& collectives, comm::Communicator* async,
                    AllReduceOptions options, LossFn loss);

 private:
  using Clock = std::chrono::steady_clock;

  void check_usable(const char* what) const;
  void broadcast_state(bool parameters);
  void launch(size_t bucket, std::span<float> data);
  // Starts the communicating call's pass: bucket 0's header from the window.
  void begin_pass();
  // Marks stragglers, completes every bucket's allreduce in order, calling
  // on_complete(b) (if given) as soon as bucket b's completed, before the
  // next is awaited (overlapping mode); rethrows CommError.
  void complete_allreduce(const std::function<void(size_t)>& on_complete = {});
  void apply_update();
  // Whether this pass's update runs bucket by bucket (step 5 above).
  bool overlaps_update() const;
  // Step 5: the allreduces' completion and the update, interleaved.
  void update_by_bucket();
  // Parameter i's averaged gradient, sum / total_samples, into its grad (none
  // when no worker had one).
  void average_gradient(size_t i, float total_samples);
  // Whether every averaged gradient of `bucket` is finite.
  bool bucket_finite(size_t bucket) const;
  // The reduced bucket-0 header: global_stats_ and the balancer's
  // observations; returns the samples summed over the workers.
  float read_reduced_header();
  // Finiteness check, optimizer step, counters, buffers' broadcast;
  // update_s from `start` (before the averaging) to the step's end.
  void finish_update(Clock::time_point start);
  // Counters and buffers' broadcast after an update.
  void count_update();
  // UsageError where step_on_gradients() cannot sum plainly.
  void check_plain_sum() const;
  // Records the completion time of launched buckets that finished (in order).
  void poll_completions();
  void wait_in_flight() noexcept;
  // The communicating call, after backward: the window's measurements, then
  // the allreduce and the update (or local SGD's own update).
  void end_window(bool local);
  // Local SGD: this worker's own update from its window, then, at every
  // H-th update, the average of the workers' parameters and buffers.
  void local_update(bool average);
  void build_reducer();
  uint64_t dense_update_bytes() const;

  std::unique_ptr<nn::Module> model_;
  std::vector<Variable> params_;
  std::vector<int64_t> hook_ids_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  // Borrowed: the caller guarantees they outlive this strategy.
  comm::Collectives& collectives_;
  comm::Communicator* async_;  // non-null in overlapping mode (same object as collectives_)
  AllReduceOptions options_;
  LossFn loss_;
  std::unique_ptr<CoalescingBucketer> bucketer_;
  BatchBalancer balancer_;
  size_t header_floats_ = 0;  // bucket 0's header: totals, then 2W measurements (dynamic)

  // Per update.
  int64_t micro_step_ = 0;         // micro-batches done in the current window
  StepStats window_;               // this worker's statistics over the window
  double window_compute_s_ = 0.0;  // forward + backward (+ slowdown) over the window
  // Rows and seconds per call of the last finished window, sent at the next
  // update (0: no rows).
  double last_call_rows_ = 0.0;
  double last_call_seconds_ = 0.0;
  bool hooks_armed_ = false;
  bool in_backward_ = false;
  std::vector<comm::Work> works_;          // overlapping mode, per bucket
  std::vector<std::span<float>> pending_;  // blocking mode, per bucket
  std::vector<Clock::time_point> launched_at_;
  std::vector<Clock::time_point> completed_at_;
  // Dense overlapping buckets: their allreduce's execution, written on the
  // communicator's thread before its Work completes, read after.
  std::vector<Clock::time_point> executed_from_;
  std::vector<Clock::time_point> executed_to_;
  Clock::time_point backward_end_;
  void measure_execution(size_t buckets);
  // update_s and update_hidden_s from the buckets' update times.
  void measure_update(size_t last);
  // Per bucket: when its update (by bucket) began and ended; equal when it
  // had none.
  std::vector<Clock::time_point> update_from_;
  std::vector<Clock::time_point> update_to_;
  size_t completions_seen_ = 0;  // buckets 0..completions_seen_-1 were seen complete

  bool updated_ = false;
  int64_t updates_ = 0;
  StepStats global_stats_;
  OverlapStats overlap_;
  std::string failure_;  // non-empty once a CommError escaped

  // Compression and local SGD.
  CompressionSettings settings_;  // options_.compression weakened to level_
  int level_ = 0;
  std::unique_ptr<CompressedReducer> reducer_;
  bool compressing_ = false;    // this pass goes through reducer_
  int64_t run_updates_ = 0;     // updates over the whole run (restored with the state)
  uint64_t bytes_at_pass_ = 0;  // the communicator's count when the pass began
  CommStats last_comm_;
  std::vector<float> average_;  // local SGD: parameters, buffers, statistics
};

}  // namespace dtrain::strategy
