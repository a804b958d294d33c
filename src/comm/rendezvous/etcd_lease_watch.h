// EtcdLeaseWatch: tells apart the two ways an etcd lease is lost, from the
// renewals its holder made (issue #19, docs/elastic.md "etcd unreachable"):
//  - the holder was silent past the TTL (its host frozen, SIGSTOP): between
//    two of its renewal attempts more than the TTL passed. The group may
//    have gone on without it: it is stale, left out (LeftOutError).
//  - etcd was unreachable (stopped, restarted, cut off) while the holder
//    kept trying: its attempts failed, none was more than the TTL apart,
//    and etcd expired the lease when it came back. Nobody could form a
//    generation without etcd meanwhile, so the holder takes a new lease
//    and goes on.
// Thread safety: one thread calls attempted() and lost_to_outage() (the
// renewing thread). Never blocks.
#pragma once

#include <chrono>

namespace dtrain::comm {

class EtcdLeaseWatch {
 public:
  using Clock = std::chrono::steady_clock;

  explicit EtcdLeaseWatch(std::chrono::milliseconds ttl) : ttl_(ttl) {}

  // Records a renewal attempt (before its result is known). Returns the
  // gap since the previous attempt.
  Clock::duration attempted() {
    const auto now = Clock::now();
    const auto gap = now - last_attempt_;
    if (gap > ttl_) silent_ = true;
    last_attempt_ = now;
    return gap;
  }
  // The attempt succeeded (the lease lives): forgets failures and gaps.
  void renewed() { failed_ = silent_ = false; }
  // The attempt failed (etcd did not answer or refused).
  void failed() { failed_ = true; }
  // The lease was found gone: whether an outage of etcd explains it (see
  // the header). Then the watch starts over for the new lease.
  bool lost_to_outage() {
    const bool outage = failed_ && !silent_;
    failed_ = silent_ = false;
    return outage;
  }

 private:
  std::chrono::milliseconds ttl_;
  Clock::time_point last_attempt_ = Clock::now();
  bool failed_ = false;
  bool silent_ = false;
};

}  // namespace dtrain::comm
