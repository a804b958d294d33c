// Elastic rendezvous: how the workers of an elastic job (docs/elastic.md)
// agree, again and again, on who is in the group. Where comm/rendezvous/rendezvous.h
// forms one fixed group once, this coordinator forms a sequence of
// GENERATIONS, each a group of ranks 0..W-1 over some of the job's worker
// SLOTS (a slot is a place in the launcher's worker list; a restarted worker
// takes over its slot). It is hosted by the local launcher, not by a worker,
// so that it survives the loss of any worker.
//
// Forming generation g+1 takes two rounds:
//  1. membership: each worker sends kJoin with the generation it belongs to
//     (none for a new worker). The round closes when every awaited slot has
//     joined and at least min_workers have, or, `settle` after the first
//     member of the current generation joined, with at least min_workers
//     joined. Awaited: for generation 0 every slot the launcher reports
//     alive (set_alive); later, the alive members of the current generation
//     (new workers are taken when they have joined, never waited for, so a
//     slow replacement does not delay the survivors: it joins at a later
//     step boundary). After generation 0 a round also needs a member of the
//     current generation (the state of the group lives in its members): new
//     workers alone keep waiting.
//     A member's join names the slots its transport found silent (the
//     heartbeat timeout): the round does not wait for those, so a stopped
//     worker is dropped within the heartbeat timeout rather than `settle`;
//     a left-out member that wakes up and joins as a member of its old
//     generation is told so (LeftOutError) and exits.
//     Ranks: the current generation's members keep their relative order,
//     new workers follow by slot. Every joined worker gets {g+1, slots by
//     rank}.
//  2. endpoints: each member binds its transport for (rank, W) and sends
//     kEndpoint; once every member has, each gets the endpoint table. A
//     member reported dead before that fails the generation: the others'
//     kEndpoint is refused ("generation 3 lost slot 1") and they join again
//     as members of g+1 (their state is still that of generation g).
// poll() (kPoll) answers how many new workers wait in an open membership
// round: the group's rank 0 polls between steps to re-form at a step
// boundary. finish(slot) (a member of the current generation ended
// training; a left-out worker's exit does not count) answers waiting and
// later joins with "finished"; stop() (the job is being stopped) refuses
// them with its reason.
//
// Wire: frames of comm/wire/wire.h over a DEALER -> ROUTER connection
// (comm/wire/framed_socket.h), sender = slot, every frame authenticated with
// the job secret (comm/wire/auth.h) when there is one; the payload layouts
// are in docs/elastic.md. A frame of another job, with a bad MAC or from a
// slot outside 0..slots-1 is refused and never changes the state.
//
// A slot claimed twice. The coordinator cannot tell which of two processes
// that claim one slot is rightful (without a job secret anyone can claim any
// slot), so:
//  - two connections joining for one slot in the same membership round:
//    both are refused at once ("slot 1 was claimed by two processes ...;
//    neither joins") and the round goes on without the slot;
//  - a new worker joining for a slot whose member of the current generation
//    still runs (the launcher starts a process for a slot only once its
//    member died) is refused at once;
//  - an endpoint is taken only from the connection that joined the
//    generation for that slot; another is refused at once. The table
//    therefore never carries an endpoint of a process that did not join.
// Every such refusal names the likely causes (two workers for one slot, or
// an outsider: set DTRAIN_JOB_SECRET).
//
// Errors: the constructor throws CommError when it cannot bind, UsageError
// for bad options. ElasticRendezvousClient's calls throw TimeoutError naming
// what they waited for when their deadline passes, CommError with the
// coordinator's reason when refused, DataError for malformed replies. The
// server thread never throws; it logs refusals and dropped frames
// rate-limited (the first 16, then every 1024th).
// Thread safety: the server's methods may be called from any thread; a
// client is used by one thread at a time.
// Blocking: join() and exchange_endpoints() block until the reply or their
// deadline; poll() never blocks; ~ElasticRendezvousServer joins its thread
// and waits at most 1 s (linger) to flush replies.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/rendezvous/elastic_group_rendezvous.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/error.h"
#include "core/log.h"

namespace dtrain::comm {

struct ElasticRendezvousOptions {
  // Worker slots of the job (the launcher's --workers): slot ids 0..slots-1.
  int slots = 1;
  // Smallest group a round may form.
  int min_workers = 1;
  // How long a round waits, after the first member of the current
  // generation joined, for alive slots that have not joined (a hung worker,
  // or one whose death the launcher has not noticed yet).
  std::chrono::milliseconds settle{5000};
  // Called on the server's thread each time a generation forms, with its
  // number and member slots by rank (the launcher records it); must not
  // throw or block. May be empty.
  std::function<void(uint32_t generation, const std::vector<int>& slots)> on_generation;
};

class ElasticRendezvousServer {
 public:
  // Binds tcp://bind_host:port (0: a free port). No slot is alive until
  // set_alive() says so.
  ElasticRendezvousServer(const std::string& bind_host, int port, ElasticRendezvousOptions options,
                          JobAuth auth, Logger& logger);
  ~ElasticRendezvousServer();
  ElasticRendezvousServer(const ElasticRendezvousServer&) = delete;
  ElasticRendezvousServer& operator=(const ElasticRendezvousServer&) = delete;

  // "host:port" for the clients.
  std::string address() const;
  // The launcher's view: a worker process for `slot` was started (true) or
  // has ended (false). An ended slot's pending registrations are dropped. A
  // process started for a slot whose member died is a new worker, not that
  // member: it is not awaited and may not claim the membership.
  void set_alive(int slot, bool alive);
  // The process of `slot` exited 0. If it was a member of the current
  // generation, training is over: waiting and later joins are answered
  // "finished", and true is returned. Call before set_alive(slot, false).
  bool finish(int slot);
  // Whether finish() counted a member's exit.
  bool finished() const;
  // Whether training finished and every member of the last generation has
  // ended (set_alive(slot, false)): what still runs then was left out.
  bool members_done() const;
  // The job is being stopped: waiting and later registrations are refused
  // with `reason`.
  void stop(const std::string& reason);
  // The last generation formed, if any.
  std::optional<uint32_t> generation() const;
  // Inbound frames dropped so far (malformed, of another job, failing
  // authentication).
  uint64_t dropped_frames() const;

 private:
  struct State;
  void serve(std::stop_token stop);

  std::string bind_host_;
  int port_ = 0;
  ElasticRendezvousOptions options_;
  JobAuth auth_;
  Logger& logger_;
  std::unique_ptr<State> state_;
  std::jthread thread_;
};

// One worker's connection to the elastic coordinator, kept for the worker's
// lifetime (rank 0 polls through it between steps).
class ElasticRendezvousClient final : public ElasticGroupRendezvous {
 public:
  // Connects (asynchronously) to `coordinator` ("host:port") as `slot` of
  // `slots`.
  ElasticRendezvousClient(const std::string& coordinator, int slot, int slots, JobAuth auth,
                          Logger& logger);
  ~ElasticRendezvousClient() override;
  ElasticRendezvousClient(const ElasticRendezvousClient&) = delete;
  ElasticRendezvousClient& operator=(const ElasticRendezvousClient&) = delete;

  int slot() const override { return slot_; }
  // Joins the next generation as a member of `member_of` (nullopt: a new
  // worker), reporting `suspects` (slots found silent; the round does not
  // wait for them). nullopt when the coordinator answers that the job
  // finished; LeftOutError when the group went on without this member.
  std::optional<ElasticGeneration> join(std::optional<uint32_t> member_of, Deadline deadline,
                                        const std::vector<int>& suspects = {}) override;
  // Registers this member's endpoint (its `rank` field = its rank) for
  // `generation`; returns the table indexed by rank.
  std::vector<PeerEndpoint> exchange_endpoints(uint32_t generation, const PeerEndpoint& self,
                                               Deadline deadline) override;
  // Never blocks: sends a poll when none is outstanding and returns the
  // number of new workers waiting to join from the newest answer (0 before
  // the first).
  uint32_t poll() override;

 private:
  struct Socket;
  // Sends one request of `kind` with `body`.
  void send(uint32_t kind, const std::vector<std::byte>& body);
  // Waits for a reply to a request of `kind`; replies to polls are absorbed.
  std::vector<std::byte> await(uint32_t kind, const std::string& what, Deadline deadline);
  // Reads one reply if there is one within `timeout`; returns its kind and
  // body, or nullopt.
  std::optional<std::pair<uint32_t, std::vector<std::byte>>> read_reply(
      std::chrono::milliseconds timeout);

  std::string coordinator_;
  int slot_;
  int slots_;
  JobAuth auth_;
  Logger& logger_;
  std::unique_ptr<Socket> socket_;
  bool poll_outstanding_ = false;
  uint32_t waiting_ = 0;
};

}  // namespace dtrain::comm
