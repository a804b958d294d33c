// Intra-op threads: how many threads one tensor kernel may split its batch
// over (train.threads sets it, beside OpenBLAS's own thread count), and the
// fan-out that splits it.
//
// Schedule: parallel_for_range(n, fn) cuts [0, n) into min(threads, n)
// contiguous ranges of near-equal length (the first n % parts one longer)
// and runs fn(begin, end, part) on each: part 0 on the calling thread, the
// others on std::jthreads created for the call and joined before it returns
// (no pool, no spinning: threads exist only while a kernel runs, so a
// 2-core machine is never held by idle workers). A kernel whose per-sample
// work writes only that sample's output, with scratch of its own per part,
// gives results bit-identical to one thread.
//
// Contract: threads >= 1 (smaller values are clamped to 1); the default is 1.
// Thread safety: the setting is an atomic, read once per call; set it before
// training starts. fn must be safe to call concurrently on disjoint ranges.
// Errors: an exception thrown by fn in a worker is rethrown by
// parallel_for_range after every part has finished (the first one caught).
// Blocking: returns when every part has finished.
#pragma once

#include <cstdint>
#include <functional>

namespace dtrain::tensor {

void set_intra_op_threads(int threads);
int intra_op_threads();

void parallel_for_range(int64_t n,
                        const std::function<void(int64_t begin, int64_t end, int part)>& fn);

}  // namespace dtrain::tensor
