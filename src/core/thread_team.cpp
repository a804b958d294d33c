#include "core/thread_team.h"

#include <utility>

namespace dtrain {

ThreadTeam::ThreadTeam(int64_t count) : count_(count), errors_(static_cast<size_t>(count)) {
  for (int64_t r = 1; r < count; ++r) {
    threads_.emplace_back([this, r](std::stop_token stop) { worker(stop, r); });
  }
}

ThreadTeam::~ThreadTeam() {
  for (auto& t : threads_) t.request_stop();
  work_ready_.notify_all();
  threads_.clear();  // joins
}

void ThreadTeam::run(const std::function<void(int64_t)>& fn) {
  {
    std::lock_guard lock(mutex_);
    task_ = &fn;
    pending_ = count_ - 1;
    ++generation_;
    for (auto& e : errors_) e = nullptr;
  }
  work_ready_.notify_all();
  try {
    fn(0);
  } catch (...) {
    errors_[0] = std::current_exception();
  }
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  task_ = nullptr;
  for (auto& e : errors_) {
    if (e) std::rethrow_exception(e);
  }
}

void ThreadTeam::worker(std::stop_token stop, int64_t member) {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(int64_t)>* task = nullptr;
    {
      std::unique_lock lock(mutex_);
      if (!work_ready_.wait(lock, stop, [&] { return generation_ != seen; })) return;
      seen = generation_;
      task = task_;
    }
    std::exception_ptr error;
    try {
      (*task)(member);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mutex_);
    // Moved, not copied: a copy left in `error` would drop its reference
    // after the unlock, and could be the last one (run() may have rethrown
    // and cleared errors_ by then), freeing the exception on this thread
    // with no lock ordering it after the reads on the caller's thread.
    errors_[static_cast<size_t>(member)] = std::move(error);
    if (--pending_ == 0) done_.notify_one();
  }
}

}  // namespace dtrain
