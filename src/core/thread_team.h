// ThreadTeam: a fixed set of worker threads that run one function per member
// and wait for all of them; the calling thread runs member 0.
// MirroredStrategy runs its replicas on one (strategy/mirrored_strategy.h),
// the tensor layer's intra-op fan-out its parts (tensor/intra_op.h).
//
// run(fn) calls fn(m) for m in [0, count) concurrently and returns when every
// call returned. If any call throws, run() rethrows the first exception (by
// member index) after all calls finished, so no member is left mid-work.
//
// Waiting: between runs a worker sleeps on a condition variable, so an idle
// team holds no core. With a spin (the constructor's `spin`, default none) a
// worker that finished a call first polls for the next run for up to that
// long before it sleeps, and run() polls for the workers' completion as long
// before it sleeps: back-to-back runs (a training step's kernels) then start
// and finish without a futex wake-up, which costs tens of microseconds on a
// virtual machine (an inter-processor interrupt to a halted vCPU). Every spin
// is bounded by that time; a team that is idle longer sleeps.
// Unclaimed members (the constructor's `caller_runs_unclaimed`, default
// off): a worker claims its member of a run when it sees the run; after
// fn(0) the caller claims and runs, one after another, the members no
// worker has claimed yet. A worker that is descheduled (a loaded machine)
// or still waking then costs the run nothing, but fn(m) may run on the
// caller's thread: for work split into independent parts, not for members
// that wait for each other.
// In-process only: there is no peer that can die, so waits need no deadline;
// a member that never returns is a bug in fn.
// Ownership: owns its std::jthreads; the destructor stops and joins them
// (polling or sleeping workers see the stop request and return).
// Thread safety: run() must not be called concurrently with itself, nor
// from inside fn.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dtrain {

class ThreadTeam {
 public:
  explicit ThreadTeam(int64_t count, std::chrono::microseconds spin = std::chrono::microseconds(0),
                      bool caller_runs_unclaimed = false);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int64_t count() const { return count_; }
  void run(const std::function<void(int64_t member)>& fn);

 private:
  void worker(std::stop_token stop, int64_t member);
  // True for the one thread that takes `member` of run `generation`.
  bool claim(int64_t member, uint64_t generation);
  // fn(member), its exception (or none) left in errors_[member].
  void run_member(const std::function<void(int64_t)>& fn, int64_t member);

  const int64_t count_;
  const std::chrono::microseconds spin_;
  const bool caller_runs_unclaimed_;
  // Sleepers and wakers pair up without a lost wake-up: a sleeper raises its
  // counter, then tests its condition under mutex_; a waker publishes the
  // condition, then reads the counter and notifies under mutex_ (both
  // sequentially consistent, so at least one of them sees the other).
  std::mutex mutex_;
  std::condition_variable_any work_ready_;
  std::condition_variable done_;
  std::atomic<uint64_t> generation_{0};  // one per run; publishes task_ and errors_'s reset
  std::atomic<int64_t> pending_{0};      // workers still in the current run
  std::atomic<int64_t> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::vector<std::atomic<uint64_t>> claimed_;  // per member: the last run it was claimed in
  const std::function<void(int64_t)>* task_ = nullptr;
  std::vector<std::exception_ptr> errors_;  // member m writes only errors_[m]
  std::vector<std::jthread> threads_;       // last: joined before the state above dies
};

}  // namespace dtrain
