// ReplicaThreads: a fixed set of worker threads that run one function per
// replica and wait for all of them; the calling thread runs replica 0.
//
// run(fn) calls fn(r) for r in [0, count) concurrently and returns when every
// call returned. If any call throws, run() rethrows the first exception (by
// replica index) after all calls finished, so no replica is left mid-work.
// In-process only: there is no peer that can die, so waits need no deadline;
// a replica that never returns is a bug in fn.
// Ownership: owns its std::jthreads; the destructor stops and joins them.
// Thread safety: run() must not be called concurrently with itself.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dtrain::strategy {

class ReplicaThreads {
 public:
  explicit ReplicaThreads(int64_t count);
  ~ReplicaThreads();
  ReplicaThreads(const ReplicaThreads&) = delete;
  ReplicaThreads& operator=(const ReplicaThreads&) = delete;

  int64_t count() const { return count_; }
  void run(const std::function<void(int64_t replica)>& fn);

 private:
  void worker(std::stop_token stop, int64_t replica);

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

}  // namespace dtrain::strategy
