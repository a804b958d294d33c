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

ThreadTeam::ThreadTeam(int64_t count, std::chrono::microseconds spin, bool caller_runs_unclaimed)
    : count_(count),
      spin_(spin),
      caller_runs_unclaimed_(caller_runs_unclaimed),
      claimed_(static_cast<size_t>(count)),
      errors_(static_cast<size_t>(count)) {
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
  const uint64_t generation = generation_.fetch_add(1) + 1;
  if (sleeping_workers_.load() > 0) {
    std::lock_guard lock(mutex_);
    work_ready_.notify_all();
  }
  run_member(fn, 0);
  if (caller_runs_unclaimed_) {
    for (int64_t m = 1; m < count_; ++m) {
      if (claim(m, generation)) {
        run_member(fn, m);
        pending_.fetch_sub(1);
      }
    }
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

bool ThreadTeam::claim(int64_t member, uint64_t generation) {
  std::atomic<uint64_t>& slot = claimed_[static_cast<size_t>(member)];
  uint64_t last = slot.load();
  while (last < generation) {
    if (slot.compare_exchange_weak(last, generation)) return true;
  }
  return false;
}

void ThreadTeam::run_member(const std::function<void(int64_t)>& fn, int64_t member) {
  std::exception_ptr error;
  try {
    fn(member);
  } catch (...) {
    error = std::current_exception();
  }
  // Moved, not copied, before the caller learns the member is done: a copy
  // left in `error` would drop its reference after run() may have rethrown
  // and cleared errors_, freeing the exception on this thread unordered with
  // the caller's reads.
  errors_[static_cast<size_t>(member)] = std::move(error);
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
    // Lost: the caller ran this member of run `seen` (and that run may be
    // over), so task_ and errors_ are not this thread's to touch.
    if (!claim(member, seen)) continue;
    run_member(*task_, member);
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      std::lock_guard lock(mutex_);
      done_.notify_one();
    }
  }
}

}  // namespace dtrain
