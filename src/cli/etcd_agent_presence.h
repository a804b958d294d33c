// AgentPresence: a per-host agent's own record in etcd (cli/etcd_agent.h,
// docs/launching.md "Several machines on etcd"), beside its workers' keys.
//
// Keys (P = "/dtrain/<job-id>/"):
//   P nodes/<i>   "<host address> pid <pid>", no lease: node index i is
//                 claimed (create-if-absent compare-and-swap, lowest free i)
//                 and never given back while the job's keys exist, so a
//                 stale agent and its replacement never share slots.
//   P agents/<i>  "" under the agent's lease of `ttl`: the agent is alive.
//
// Liveness. A thread renews the lease every ttl/3. An agent silent past the
// TTL (its host frozen, SIGSTOP, cut off) finds the lease gone when it runs
// again: lost() turns true and `on_lost` is called once, on that thread.
// The group went on without this host in the meantime (its workers' leases
// expired too), so the agent must stop: it is left out, as a stale worker
// is (LeftOutError). etcd unreachable is not staleness: the renewal is
// retried (a warning each time); a lease etcd expired while this agent kept
// trying (comm/rendezvous/etcd_lease_watch.h) is replaced by a new one.
//
// Clean-up (leave()): the agent revokes its lease, then, when no other
// agent of the job is alive, removes every key of the job (P*), so that the
// same job id starts fresh next time. Of agents leaving together at least
// the last one to revoke sees no other alive and cleans up (etcd orders
// the revocations and the reads). A host killed with SIGKILL leaves its
// agents/<i> key for up to the TTL: leave() waits up to `wait_for_others`
// for such keys to go. Keys of a job whose every agent was SIGKILLed stay
// (remove them with `etcdctl del --prefix /dtrain/<job-id>/`).
//
// Ownership: owns its EtcdClient and thread; the logger must outlive it.
// Thread safety: node(), lost() and check() from any thread; leave() from
// the owner's thread. Errors: the constructor throws TimeoutError naming
// etcd when it does not answer by `deadline`; leave() never throws (a
// failure is logged). Blocking: the constructor and check() for etcd calls
// bounded by their deadline; leave() for at most wait_for_others plus a few
// calls of 2 s; the destructor for the renewing thread's current call.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "comm/rendezvous/etcd_client.h"
#include "comm/rendezvous/etcd_lease_watch.h"
#include "comm/rendezvous/launch_env.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

class AgentPresence {
 public:
  // `on_lost` (may be empty) is called once, on the renewing thread, when
  // the lease is found lost.
  AgentPresence(const comm::RdzvUrl& url, const std::string& host_address, std::chrono::seconds ttl,
                std::function<void()> on_lost, Logger& logger, Deadline deadline);
  ~AgentPresence();
  AgentPresence(const AgentPresence&) = delete;
  AgentPresence& operator=(const AgentPresence&) = delete;

  int node() const { return node_; }
  // The lease expired: this agent was silent past the TTL.
  bool lost() const { return lost_; }
  // Renews the lease now (one call, bounded by `deadline`); returns lost().
  // etcd unreachable counts as not lost.
  bool check(Deadline deadline);
  // Stops renewing, revokes the lease and cleans up the job's keys when no
  // other agent is alive (see the header's contract).
  void leave(std::chrono::milliseconds wait_for_others);

 private:
  void renew(std::stop_token stop);
  void mark_lost();
  // A new lease, and the alive key under it.
  void put_alive(Deadline deadline);

  comm::EtcdClient etcd_;
  std::string prefix_;
  std::chrono::seconds ttl_;
  std::string me_;  // "<host address> pid <pid>"
  Logger& logger_;
  std::mutex check_mutex_;  // check() runs on the renewing thread and the owner's
  comm::EtcdLeaseWatch watch_;
  int node_ = -1;
  int64_t lease_ = 0;
  std::atomic<bool> lost_{false};
  std::atomic<bool> told_{false};
  std::function<void()> on_lost_;
  std::jthread thread_;
};

}  // namespace dtrain::cli
