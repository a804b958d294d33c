// ThreadTeam: a fixed set of parked worker threads that run one function per
// member and wait for all of them; the calling thread runs member 0.
// MirroredStrategy runs its replicas on one (strategy/mirrored_strategy.h),
// the tensor layer's intra-op fan-out its parts (tensor/intra_op.h).
//
// run(fn) calls fn(m) for m in [0, count) concurrently and returns when every
// call returned. Between runs the workers sleep on a condition variable (no
// spinning), so an idle team holds no core. If any call throws, run()
// rethrows the first exception (by member index) after all calls finished,
// so no member is left mid-work.
// In-process only: there is no peer that can die, so waits need no deadline;
// a member that never returns is a bug in fn.
// Ownership: owns its std::jthreads; the destructor stops and joins them
// (parked workers wake, see the stop request and return).
// Thread safety: run() must not be called concurrently with itself, nor
// from inside fn.
#pragma once

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
  explicit ThreadTeam(int64_t count);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int64_t count() const { return count_; }
  void run(const std::function<void(int64_t member)>& fn);

 private:
  void worker(std::stop_token stop, int64_t member);

  int64_t count_;
  std::mutex mutex_;
  std::condition_variable_any work_ready_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* task_ = nullptr;
  uint64_t generation_ = 0;
  int64_t pending_ = 0;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::jthread> threads_;  // last: joined before the state above dies
};

}  // namespace dtrain
