// Intra-op threads: how many threads one tensor kernel may split its batch
// over (train.threads sets it, beside OpenBLAS's own thread count), and the
// fan-out that splits it.
//
// Schedule: parallel_for_range(n, fn) cuts [0, n) into min(threads, n)
// contiguous ranges of near-equal length (the first n % parts one longer)
// and runs fn(begin, end, part) on each: part 0 on the calling thread, the
// others on the process's intra-op team (core/thread_team.h), created on the
// first call that needs it with one thread per setting (rebuilt when the
// setting changes) and parked on a condition variable between calls, so
// that a kernel pays a wake-up, not a thread creation, and an idle team
// holds no core (no spinning). A kernel whose per-sample work writes only
// that sample's output, with scratch of its own per part, gives results
// bit-identical to one thread.
//
// Why process-wide: the setting is one per process, like OpenBLAS's thread
// count, and kernels are called from deep inside autograd, which carries no
// context to hand a team through. The team is owned by a function-local
// object: destroyed at exit, which joins the parked workers (left alone if
// a fan-out is still running on another thread then). Fork: a child (the
// launcher forks and execs) inherits none of the team's threads; a call in
// the child builds a team of its own and the parent's is never touched there.
// Busy team: a call made while another fan-out holds the team (from another
// thread, or nested inside fn) runs its parts one after another on its own
// thread, in part order, with the same ranges: the same results, no
// deadlock.
//
// Contract: threads >= 1 (smaller values are clamped to 1); the default is 1.
// Thread safety: the setting is an atomic, read once per call; set it before
// training starts. fn must be safe to call concurrently on disjoint ranges.
// Errors: an exception thrown by fn in any part is rethrown by
// parallel_for_range after every part has finished (the lowest part's).
// Blocking: returns when every part has finished.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>

namespace dtrain::tensor {

void set_intra_op_threads(int threads);
int intra_op_threads();

// [begin, end) of part `part` of `parts` near-equal contiguous ranges of
// [0, n): the first n % parts one longer, empty where n < parts. The cut
// parallel_for_range makes, for kernels that split two extents alike.
std::pair<int64_t, int64_t> part_range(int64_t n, int64_t part, int64_t parts);

void parallel_for_range(int64_t n,
                        const std::function<void(int64_t begin, int64_t end, int part)>& fn);

}  // namespace dtrain::tensor
