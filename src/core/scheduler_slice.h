// Scheduler slice: asks Linux to give the calling thread a short time slice,
// so that when it wakes up it preempts the thread running on a busy core at
// once instead of waiting for that thread's slice to end.
//
// Why: the all-reduce strategy's communicator thread sleeps until backward
// launches a bucket, then has a few tens of microseconds of work (copies and
// a reduction) and a handshake with its peers. With one worker process per
// core, every core is busy with backward when it wakes; under the EEVDF
// scheduler (Linux 6.6 and later) a woken thread with the default slice
// (0.7 ms times 1 + log2 of the cores, 1.4 ms with 2) waits for the running one to use up its own,
// so a bucket launched early in backward was measured to start only when backward ended, hiding
// nothing. A thread that requests a short slice (sched_attr::sched_runtime, honoured for normal
// threads since Linux 6.12) gets an earlier virtual deadline and preempts on wake-up; it still gets
// only its fair share of the CPU.
//
// Thread safety: acts on the calling thread only. Errors: none thrown; the
// result says whether the kernel recorded the slice (false on other systems
// and on kernels that ignore it, where nothing changes). Never blocks.
#pragma once

#include <chrono>
#include <optional>

namespace dtrain {

// Requests `slice` (clamped to the kernel's [100 us, 100 ms]) for the
// calling thread, keeping its policy and nice value. Returns true when the
// thread's slice reads back as requested.
bool request_scheduler_slice(std::chrono::microseconds slice);

// The calling thread's slice as the kernel reports it: the requested one, or
// the default (the base slice: 1.4 ms on a 2-core machine under Linux 6.18);
// 0 on kernels that report none; nullopt where it cannot be read (not Linux,
// or a kernel without sched_getattr).
std::optional<std::chrono::microseconds> scheduler_slice();

}  // namespace dtrain
