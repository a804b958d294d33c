#include "core/scheduler_slice.h"

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dtrain {

#if defined(__linux__) && defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
namespace {

// struct sched_attr as of its first version (SCHED_ATTR_SIZE_VER0, 48 bytes);
// glibc before 2.41 declares neither it nor the calls.
struct SchedAttr {
  uint32_t size = sizeof(SchedAttr);
  uint32_t sched_policy = 0;
  uint64_t sched_flags = 0;
  int32_t sched_nice = 0;
  uint32_t sched_priority = 0;
  uint64_t sched_runtime = 0;  // ns: the requested slice of a normal thread
  uint64_t sched_deadline = 0;
  uint64_t sched_period = 0;
};
static_assert(sizeof(SchedAttr) == 48);

bool read_attr(SchedAttr& attr) {
  return syscall(SYS_sched_getattr, 0, &attr, sizeof(attr), 0) == 0;
}

}  // namespace

bool request_scheduler_slice(std::chrono::microseconds slice) {
  SchedAttr attr;
  if (!read_attr(attr)) return false;
  if (attr.sched_policy != SCHED_OTHER && attr.sched_policy != SCHED_BATCH) return false;
  const auto us = std::clamp<int64_t>(slice.count(), 100, 100000);
  attr.size = sizeof(attr);
  attr.sched_flags = 0;
  attr.sched_runtime = static_cast<uint64_t>(us) * 1000;
  if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0) return false;
  const std::optional<std::chrono::microseconds> now = scheduler_slice();
  return now && now->count() == us;
}

std::optional<std::chrono::microseconds> scheduler_slice() {
  SchedAttr attr;
  if (!read_attr(attr)) return std::nullopt;
  return std::chrono::microseconds(static_cast<int64_t>(attr.sched_runtime / 1000));
}

#else

bool request_scheduler_slice(std::chrono::microseconds /*slice*/) { return false; }

std::optional<std::chrono::microseconds> scheduler_slice() { return std::nullopt; }

#endif

}  // namespace dtrain
