// EtcdElasticRendezvous: the elastic rendezvous of comm/rendezvous/elastic_group_rendezvous.h
// with the job's state in etcd (issue #19) instead of in the local launcher,
// so that any host, the first one included, can die and the others re-form.
// The semantics are those of ElasticRendezvousServer (elastic_rendezvous.h):
// a membership round with min workers and a settle time, then endpoints.
// Every participant runs the same code; none is the coordinator.
//
// Keys (P = "/dtrain/<job_id>/"):
//   P state                 the round's state, JSON (docs/elastic.md):
//                           {"gen": g (-1: none yet), "members": [slots by rank of g],
//                            "round": [{"slot", "member", "suspects"}...] (joined for g+1),
//                            "finished": bool}
//   P alive/<slot>          "" under the participant's lease: its liveness
//   P gen/<g>/endpoint/<r>  rank r's endpoint in generation g (JSON), under its lease
//
// Leases. Each participant holds one lease of `lease_ttl`, renewed by its
// thread every ttl/3. A participant that stops (SIGKILL, SIGSTOP, a lost
// host) stops renewing; after the TTL etcd removes its keys, and the others
// stop awaiting it. A clean exit revokes the lease at once.
//
// Forming generation g+1 (every step a compare-and-swap of P state against
// the text just read, so that of two participants racing, exactly one
// writes and the other reads again):
//  1. a joiner adds itself to "round" (as a member of g, or new);
//  2. any joiner closes the round, by writing {gen: g+1, members, round: []},
//     when at least min_workers joined and:
//       - g = none: max_workers joined, or `settle` passed since it saw
//         min_workers joined;
//       - otherwise a member of g joined (new workers alone keep waiting,
//         unless every alive member of g joined as new: g failed while
//         forming and none of them holds a state),
//         and every member of g that is alive (its key exists) and not
//         reported silent by a joiner has joined, or max_workers joined, or
//         `settle` passed since it saw the first member of g joined.
//     Joiners whose alive key is gone are left out; at most max_workers are
//     taken. Ranks: the members of g in their order, then new ones by slot;
//  3. every joiner reads the new state: in "members" it has its generation;
//     a member of g not in it is left out (LeftOutError); a new one joins again.
// Endpoints: each member puts its endpoint for its rank and waits until all
// W are in. A member of g+1 whose alive key goes, or a member of g+1 that
// joins a later round (it gave up on g+1), fails the generation: CommError,
// and the members join again as members of g+1.
// A stale participant: a member whose lease expired (it was silent past the
// TTL; the group may have gone on without it) is told so by join()
// (LeftOutError), as is a member of a generation other than the newest. A
// new worker whose lease expired takes a new one.
// poll(): the number of new workers in the open round, refreshed by the
// participant's thread (never blocks the caller).
//
// etcd unreachable: every etcd call is bounded by min(call_timeout, the
// caller's deadline left); a failed call is retried until the caller's
// deadline, then TimeoutError names etcd's endpoint, what was awaited and
// the last error. Nothing waits without a deadline. A lease etcd expired
// while this participant kept trying to renew it (etcd stopped or cut off
// past the TTL; etcd_lease_watch.h) is replaced by a new one, with the
// alive key: no generation could form without etcd meanwhile.
// The state is read by polling (`poll_interval`), not by etcd's watch (a
// stream the JSON gateway serves poorly): a generation forms within
// poll_interval of its condition.
//
// Ownership: owns its EtcdClient, lease and thread; the logger must outlive
// it. Thread safety: one caller thread at a time (its own thread only
// renews the lease and refreshes poll()). Errors: the constructor throws
// TimeoutError when etcd does not answer within call_timeout, ConfigError
// for bad options; the calls as in elastic_group_rendezvous.h.
// Blocking: join() and exchange_endpoints() until their answer or deadline;
// the destructor for at most one etcd call (the lease's revocation, 1 s).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/rendezvous/elastic_group_rendezvous.h"
#include "comm/rendezvous/etcd_client.h"
#include "core/log.h"

namespace dtrain::comm {

struct EtcdRendezvousOptions {
  std::string endpoint;  // etcd's client address, "host:port"
  std::string job_id;    // keys under /dtrain/<job_id>/; no '/'
  int slot = 0;          // this participant's id, unique among the job's running workers
  int min_workers = 1;   // smallest group a round may form
  int max_workers = 1;   // largest; a round with this many joined closes at once
  // How long a round waits, once it could close, for alive members that
  // have not joined (and, for the first generation, for more workers).
  std::chrono::milliseconds settle{5000};
  // The lease: a participant silent this long is dropped.
  std::chrono::seconds lease_ttl{10};
  // How often a waiting participant reads the state.
  std::chrono::milliseconds poll_interval{100};
  // Bound on one etcd call.
  std::chrono::milliseconds call_timeout{5000};
};

class EtcdElasticRendezvous final : public ElasticGroupRendezvous {
 public:
  // Takes a lease, puts this participant's alive key and starts renewing it.
  EtcdElasticRendezvous(EtcdRendezvousOptions options, Logger& logger);
  ~EtcdElasticRendezvous() override;
  EtcdElasticRendezvous(const EtcdElasticRendezvous&) = delete;
  EtcdElasticRendezvous& operator=(const EtcdElasticRendezvous&) = delete;

  int slot() const override { return options_.slot; }
  std::optional<ElasticGeneration> join(std::optional<uint32_t> member_of, Deadline deadline,
                                        const std::vector<int>& suspects = {}) override;
  std::vector<PeerEndpoint> exchange_endpoints(uint32_t generation, const PeerEndpoint& self,
                                               Deadline deadline) override;
  uint32_t poll() override;

  // What ended generation `generation` while its members work (the etcd
  // agent's restart mode, cli/etcd_restart_agent.h, watches it), or
  // nullopt while it stands or once training finished, checked in this
  // order: a later generation formed; a member's alive key went (its lease
  // lapsed; `lost` names it); with `admit_new` and room below max_workers,
  // a new participant waits (`admission`: every member sees the same even
  // after some joined the next round for it); a member joined a new round
  // (it gave up on this one). One
  // read of the state and of the alive keys; may be called from any thread
  // (it touches no member but the client). Throws TimeoutError as join().
  struct GroupChange {
    std::string why;
    std::vector<int> lost;   // members whose lease lapsed
    bool admission = false;  // only new participants wait
  };
  std::optional<GroupChange> watch(uint32_t generation, bool admit_new, Deadline deadline);

  // Training is over (a member of the newest generation finished): waiting
  // and later joins get nullopt.
  void finish(Deadline deadline);
  // Stops renewing the lease, as a hung host would: after the TTL its keys
  // go and the others re-form without it. Used by tests and by an agent
  // that abandons its workers.
  void stop_keepalive();

 private:
  struct State;
  struct Round;
  // Runs `call` with a per-call deadline, retrying failed calls until
  // `deadline`; then TimeoutError naming `what`.
  template <typename Call>
  auto with_retry(const std::string& what, Deadline deadline, Call call);
  // The state and its text (empty text: the key does not exist).
  std::pair<State, std::string> read_state(Deadline deadline);
  // Compare-and-swap of the state from `expected` (empty: absent).
  bool swap_state(const std::string& expected, const State& next, Deadline deadline);
  // Renews the lease now; for a member whose lease expired, LeftOutError; a
  // new worker takes a new lease.
  void check_lease(std::optional<uint32_t> member_of, Deadline deadline);
  void take_lease(Deadline deadline);
  std::vector<int> alive_slots(Deadline deadline);
  // Closes the round in `state` (read as `text`) if it may; true if this call did.
  bool try_close(const State& state, const std::string& text, Round& round, Deadline deadline);
  void renew(std::stop_token stop);
  std::string key(const std::string& rest) const { return prefix_ + rest; }

  EtcdRendezvousOptions options_;
  Logger& logger_;
  EtcdClient etcd_;
  std::string prefix_;
  std::atomic<int64_t> lease_{0};
  std::atomic<bool> lease_lost_{false};
  std::atomic<bool> keepalive_{true};
  std::atomic<bool> poll_wanted_{false};
  std::atomic<uint32_t> waiting_{0};
  std::jthread thread_;
};

}  // namespace dtrain::comm
