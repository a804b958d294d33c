#include "tensor/intra_op.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>

#include "core/thread_team.h"

namespace dtrain::tensor {
namespace {

std::atomic<int> g_threads{1};
std::atomic<int64_t> g_spin_us{kDefaultIntraOpSpin.count()};

// The process's intra-op team and who may use it (see the header: why it is
// process-wide, exit and fork).
class IntraOpTeam {
 public:
  IntraOpTeam() = default;
  IntraOpTeam(const IntraOpTeam&) = delete;
  IntraOpTeam& operator=(const IntraOpTeam&) = delete;

  ~IntraOpTeam() {
    // A fan-out still running elsewhere at exit, or a team whose threads live
    // in the parent of this forked process: leave it (the process is ending).
    if (busy_.exchange(true, std::memory_order_acquire) || owner_ != getpid()) {
      static_cast<void>(team_.release());
    }
    team_.reset();  // joins the parked workers
  }

  // Runs run_part(p) for p in [0, parts) with `threads` and `spin` the
  // current settings (parts <= threads); the lowest part's exception is
  // rethrown.
  void run(int64_t parts, int threads, std::chrono::microseconds spin,
           const std::function<void(int64_t)>& run_part) {
    if (busy_.exchange(true, std::memory_order_acquire)) {
      run_in_order(parts, run_part);
      return;
    }
    struct Release {
      std::atomic<bool>& busy;
      ~Release() { busy.store(false, std::memory_order_release); }
    } release{busy_};
    const pid_t pid = getpid();
    if (team_ && owner_ != pid) static_cast<void>(team_.release());  // the parent's threads
    if (!team_ || team_->count() != threads || team_spin_ != spin) {
      team_.reset();
      team_ = std::make_unique<ThreadTeam>(threads, spin, /*caller_runs_unclaimed=*/true);
      team_spin_ = spin;
      owner_ = pid;
    }
    team_->run([&](int64_t member) {
      if (member < parts) run_part(member);
    });
  }

 private:
  static void run_in_order(int64_t parts, const std::function<void(int64_t)>& run_part) {
    std::exception_ptr error;
    for (int64_t part = 0; part < parts; ++part) {
      try {
        run_part(part);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }

  // Set by the one fan-out using team_ (a flag, not a mutex: a nested call on
  // the same thread must see "busy", not lock twice).
  std::atomic<bool> busy_{false};
  std::unique_ptr<ThreadTeam> team_;
  std::chrono::microseconds team_spin_{0};  // the spin team_ was built with
  pid_t owner_ = 0;                         // the process whose threads team_ holds
};

IntraOpTeam& intra_op_team() {
  static IntraOpTeam team;
  return team;
}

}  // namespace

void set_intra_op_threads(int threads) { g_threads.store(std::max(1, threads)); }

int intra_op_threads() { return g_threads.load(); }

void set_intra_op_spin(std::chrono::microseconds spin) {
  g_spin_us.store(std::max<int64_t>(0, spin.count()));
}

std::chrono::microseconds intra_op_spin() { return std::chrono::microseconds(g_spin_us.load()); }

std::pair<int64_t, int64_t> part_range(int64_t n, int64_t part, int64_t parts) {
  const int64_t base = n / parts, extra = n % parts;
  auto begin_of = [&](int64_t p) { return p * base + std::min(p, extra); };
  return {begin_of(part), begin_of(part + 1)};
}

void parallel_for_range(int64_t n,
                        const std::function<void(int64_t begin, int64_t end, int part)>& fn) {
  if (n <= 0) return;
  const int threads = intra_op_threads();
  const int64_t parts = std::min<int64_t>(threads, n);
  if (parts == 1) {
    fn(0, n, 0);
    return;
  }
  intra_op_team().run(parts, threads, intra_op_spin(), [&](int64_t part) {
    const auto [begin, end] = part_range(n, part, parts);
    fn(begin, end, static_cast<int>(part));
  });
}

}  // namespace dtrain::tensor
