// Intra-op threads: how many threads one tensor kernel may split its batch
// over (train.threads sets it, beside OpenBLAS's own thread count), and the
// fan-out that splits it.
//
// Schedule: parallel_for_range(n, fn) cuts [0, n) into min(threads, n)
// contiguous ranges of near-equal length (the first n % parts one longer)
// and runs fn(begin, end, part) on each: part 0 on the calling thread, the
// others on the process's intra-op team (core/thread_team.h; a part that no
// team thread has started when part 0 is done runs on the caller too, so a
// descheduled thread does not hold the call up), created on the first call
// that needs it with one thread per setting (rebuilt when a
// setting changes), so that a kernel pays a wake-up, not a thread creation.
// Between calls the team's threads poll for the next one for a bounded
// spin (set_intra_op_spin; default kDefaultIntraOpSpin), then sleep on a
// condition variable, so an idle team holds no core. A kernel whose
// per-sample work writes only that sample's output, with scratch of its
// own per part, gives results bit-identical to one thread.
//
// Why the spin (measured on the 2-vCPU KVM guest, train_step_bench at
// global batch 256, medians of 5, the arms alternating in one run under
// chrt -f so that other work on the machine could not take a core; see
// docs/performance.md, "Two threads against two processes"): a fan-out
// that wakes a sleeping thread and sleeps on its completion costs ~50 us
// there (a futex wake is an inter-processor interrupt to the other vCPU),
// against ~1 us when both sides poll. A training step is a chain of
// fan-outs a few hundred microseconds apart (the MLP: 8 per step, each
// ~100-400 us of GEMM per part), so the wake-ups ate most of the second
// thread: the MLP ran 1.15x one thread without the spin and 1.54x with
// 200 us (2 processes: 1.38x), LeNet-5 1.41x and 1.56x (1.95x). 200 us
// covers the serial work between a step's kernels; a longer wait (the data
// loader, evaluation) ends in sleep, so the spin costs at most 200 us of a
// core per fan-out. On a loaded machine a polling thread competes for its
// core, and 2 threads can run slower than 1 with or without the spin.
//
// Contract: threads >= 1 (smaller values are clamped to 1); the default is 1.
// Thread safety: the settings are atomics, read once per call; set them
// before training starts. fn must be safe to call concurrently on disjoint ranges.
// Errors: an exception thrown by fn in any part is rethrown by
// parallel_for_range after every part has finished (the lowest part's).
// Blocking: returns when every part has finished.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <utility>

namespace dtrain::tensor {

void set_intra_op_threads(int threads);
int intra_op_threads();

inline constexpr std::chrono::microseconds kDefaultIntraOpSpin{200};

// How long the team's threads poll for the next fan-out (and the caller for
// their completion) before they sleep; zero: sleep at once. Negative values
// are clamped to zero. A change rebuilds the team on its next use.
void set_intra_op_spin(std::chrono::microseconds spin);
std::chrono::microseconds intra_op_spin();

// [begin, end) of part `part` of `parts` near-equal contiguous ranges of
// [0, n): the first n % parts one longer, empty where n < parts. The cut
// parallel_for_range makes, for kernels that split two extents alike.
std::pair<int64_t, int64_t> part_range(int64_t n, int64_t part, int64_t parts);

void parallel_for_range(int64_t n,
                        const std::function<void(int64_t begin, int64_t end, int part)>& fn);

}  // namespace dtrain::tensor
