#include "core/thread_team.h"

#include <utility>

namespace dtrain {
namespace {

// Polls ready() until it holds or `spin` has passed (never when spin is 0);
// true if it held. Every few dozen polls it reads the clock and yields the
// core: at once back when nothing else is runnable there, else to the
// runnable thread (another member, or another process on a shared machine),
// so that a team with more threads than free cores still makes progress.
template <class Ready>
bool spin_until(const Ready& ready, std::chrono::microseconds spin) {
  if (spin.count() <= 0) return ready();
  const auto until = std::chrono::steady_clock::now() + spin;
  while (true) {
    for (int i = 0; i < 32; ++i) {
      if (ready()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (std::chrono::steady_clock::now() >= until) return ready();
    std::this_thread::yield();
  }
}

}  // namespace

ThreadTeam::ThreadTeam(int64_t count, std::chrono::microseconds spin)
    : count_(count), spin_(spin), errors_(static_cast<size_t>(count)) {
  for (int64_t r = 1; r < count; ++r) {
    threads_.emplace_back([this, r](std::stop_token stop) { worker(stop, r); });
  }
}

ThreadTeam::~ThreadTeam() {
  for (auto& t : threads_) t.request_stop();
  {
    std::lock_guard lock(mutex_);  // a worker between its test and its wait sees the stop
  }
  work_ready_.notify_all();
  threads_.clear();  // joins
}

void ThreadTeam::run(const std::function<void(int64_t)>& fn) {
  // The workers of the last run are done with task_ and errors_ (pending_ was
  // 0 when it returned), and the next generation publishes the new ones.
  task_ = &fn;
  for (auto& e : errors_) e = nullptr;
  pending_.store(count_ - 1);
  generation_.fetch_add(1);
  if (sleeping_workers_.load() > 0) {
    std::lock_guard lock(mutex_);
    work_ready_.notify_all();
  }
  try {
    fn(0);
  } catch (...) {
    errors_[0] = std::current_exception();
  }
  auto done = [&] { return pending_.load() == 0; };
  if (!spin_until(done, spin_)) {
    std::unique_lock lock(mutex_);
    caller_sleeping_.store(true);
    done_.wait(lock, done);
    caller_sleeping_.store(false);
  }
  task_ = nullptr;
  for (auto& e : errors_) {
    if (e) std::rethrow_exception(e);
  }
}

void ThreadTeam::worker(std::stop_token stop, int64_t member) {
  uint64_t seen = 0;
  while (true) {
    auto ready = [&] {
      return generation_.load(std::memory_order_acquire) != seen || stop.stop_requested();
    };
    if (!spin_until(ready, spin_)) {
      std::unique_lock lock(mutex_);
      sleeping_workers_.fetch_add(1);
      work_ready_.wait(lock, stop, [&] { return generation_.load() != seen; });
      sleeping_workers_.fetch_sub(1);
    }
    if (stop.stop_requested()) return;
    seen = generation_.load(std::memory_order_acquire);
    std::exception_ptr error;
    try {
      (*task_)(member);
    } catch (...) {
      error = std::current_exception();
    }
    // Moved before the release below: a copy left in `error` would drop its
    // reference after run() may have rethrown and cleared errors_, freeing the
    // exception on this thread unordered with the caller's reads.
    errors_[static_cast<size_t>(member)] = std::move(error);
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      std::lock_guard lock(mutex_);
      done_.notify_one();
    }
  }
}

}  // namespace dtrain
