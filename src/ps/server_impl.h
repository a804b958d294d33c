// Server::Impl, the parameter server's private state and request handlers
// (server.h holds the contract). The handlers live in these files:
// server.cpp (the serving loop, dense pulls, the sync close),
// server_push.cpp (dense and row pushes, a push's rows and pull, row pulls),
// server_replies.cpp (replies and the deferred push replies),
// server_state.cpp (init, restore, state import and export)
// and server_replication.cpp (the replication hooks, replication.h).
// Thread safety: the serving thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "ps/consistency_state.h"
#include "ps/frame_pool.h"
#include "ps/replica_store.h"
#include "ps/replication.h"
#include "ps/server.h"
#include "ps/shard_store.h"
#include "ps/shm_segment.h"

namespace dtrain::ps {

using Clock = std::chrono::steady_clock;

class Server::Impl {
 public:
  // Validates the options and binds the socket.
  Impl(ServerOptions options, const comm::JobAuth& auth, Logger& logger);
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  ServeResult run(const std::stop_token& stop, Deadline deadline);
  StateDict state_dict() const;
  ServerStats stats() const;
  void set_server_endpoints(std::vector<std::string> endpoints);
  StateDict replica_state_dict(int primary) const;

  ServerOptions options_;
  comm::JobAuth auth_;
  Logger& logger_;
  std::optional<zmq::context_t> own_context_;  // when options_.context is null
  zmq::context_t& context_;                    // options_.context or own_context_
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  // The payload buffers of this server's replies, reused (frame_pool.h).
  std::shared_ptr<FramePool> frames_ = FramePool::create();
  std::string endpoint_;

 private:
  struct Parked {
    std::string identity;
    uint32_t worker = 0;
    uint64_t request_id = 0;
    uint64_t min_version = 0;
    Clock::time_point until;
    // A pull riding with a push (Message::with_pull) is answered as the
    // push's reply, with the push's status.
    Kind reply_to = Kind::kPull;
    ReplyStatus status = ReplyStatus::kOk;
    // The push's row prefetch (Message::prefetch), answered with the pull.
    std::vector<Message> prefetch = {};
  };

  // A frame that passed the socket's checks: its payload decoded, then handle().
  // Takes the frame's body (a push's gradient is viewed in it).
  void on_frame(comm::wire::Frame& frame);
  void handle(const std::string& identity, uint32_t sender, Message& m);
  // Every message to `identity` goes out through here: a push reply deferred
  // for that connection first, so replies keep their order.
  void send(const std::string& identity, uint32_t receiver, const Message& m);
  // A sync push's reply (held, not applied) is deferred: it leaves with the
  // same connection's next message, normally the pull parked right behind
  // it, in one write that wakes the worker once instead of twice; at the
  // latest at the end of the serving loop's turn in which no pull of that
  // connection is parked (flush_push_replies). A parked pull is answered
  // within its wait_ms, so the push reply never waits past the client's
  // deadline.
  void defer_reply(const std::string& identity, uint32_t worker, Message m);
  struct DeferredReply {
    std::string identity;
    uint32_t receiver = 0;
    Message message;
  };
  // Sends the deferred replies for which `due` holds, in their order.
  void flush_push_replies(const std::function<bool(const DeferredReply&)>& due);
  bool pull_parked(const std::string& identity) const;
  void send_now(const std::string& identity, uint32_t receiver, const Message& m);
  void serve(const std::string& identity, Message& m);
  void reply(const std::string& identity, uint32_t worker, Message m);
  void on_init(const std::string& identity, Message& m);
  // A repeated init (a worker joining an initialised server): Refusal unless
  // its dense tensors (names, shapes) and tables (names, dims) are the job's.
  void check_same_job(const ShardPlan& plan, const std::vector<SparseTableSpec>& tables) const;
  void on_pull(const std::string& identity, const Message& m);
  // A reply to `m` with `status` and its error text (at the current version).
  Message status_reply(const Message& m, ReplyStatus status, std::string error) const;
  // Answers a request of a worker declared dead: kLeftOut.
  void reply_left_out(const std::string& identity, uint32_t receiver, const Message& m);
  // A compressed push: its pieces decoded into m.floats, the dense gradient
  // of this server's range (compressed_push.h); Refusal naming the worker
  // and the piece when one does not decode.
  void decode_pieces(Message& m) const;
  // A dense push (decoded pieces of a compressed one included), with the
  // row pushes riding with it and the pull behind it (server_push.cpp).
  void on_push(const std::string& identity, Message& m);
  // Checks all of a push (its rows first) and takes it: Refusal before
  // anything changed when any part is bad; std::nullopt for a repeated
  // push (nothing taken again); otherwise the dense push's admission.
  std::optional<Admission> take_push(Message& m);
  // The pull of a push that carries one (Message::with_pull): answered now
  // when ready (after the push closed what it could), else parked.
  void pull_after_push(const std::string& identity, const Message& m, ReplyStatus status);
  // A push whose gradient lies in shared memory (m.shm): its worker's
  // segment opened (or re-opened for a new segment id) and the gradient
  // viewed there, checked (Refusal naming what does not match).
  void resolve_shm_push(Message& m);
  // The worker's segment for pull replies, when its pushes came that way.
  ShmSegment* shm_segment(uint32_t worker) const;
  void on_pull_rows(const std::string& identity, const Message& m);
  void on_push_rows(const std::string& identity, Message& m);
  void on_set_state(const std::string& identity, const Message& m);
  // A replacement server's first init (from `worker`): its optimizer state,
  // embedding rows and version from options_.restore, its dense values from
  // the init. False (logged) when the checkpoint does not fit the init's
  // layout.
  bool restore_shard(uint32_t worker);
  // Imports a per-server state dict (split_state layout) into fresh shard
  // objects, swapped in only when all of it fits; the version becomes
  // `version`. Refusal naming what is missing.
  void import_shard(const StateDict& state, uint64_t version);
  // A push this incarnation has already taken (the same request id, or an
  // older one, from the worker's current incarnation): the client sent it
  // again after losing the connection. Answered, never applied twice.
  bool repeated_push(const Message& m) const;
  void report_version();
  SparseTable& table_for(const Message& m, size_t floats_per_key);
  bool pull_ready(uint32_t worker, uint64_t min_version) const;
  void answer_pull(const std::string& identity, uint32_t worker, uint64_t request_id,
                   Kind reply_to = Kind::kPull, ReplyStatus status = ReplyStatus::kOk,
                   const std::vector<Message>& prefetch = {});
  // A row pull's reply body: the rows of m.keys (created when missing, the
  // creation recorded for the backups), viewed in the table (server_push.cpp).
  Message row_reply(const Message& m);
  void serve_parked(Clock::time_point now);
  // Sync: closes the open version when it is complete and applies its update.
  void close_version();
  // Waits at most `wait` for a frame on the socket or a backup's ack.
  void wait_for_frames(std::chrono::milliseconds wait);
  // Replication (replication.h): a frame from another server (an update or
  // a state for this server's ReplicaStore), and the state a backup of this
  // server's range gets when it needs one.
  void on_replica_frame(const comm::wire::Frame& frame);
  ReplicaState replica_state() const;
  void answer_fetch(const std::string& identity, uint32_t primary);
  // A replacement with backups: fetches its range's copy from them
  // (inherited_) before it serves.
  void inherit_from_backup();
  // At the replacement's first init: imports inherited_; false (logged) when
  // it does not fit.
  bool take_inherited(uint32_t worker);
  void service_backups(Clock::time_point now);
  // True once every worker has been dead, none finished, for longer than
  // max(heartbeat_timeout, join_timeout); logs why.
  bool abandoned(Clock::time_point now);
  // Takeover (server_takeover.cpp, docs "A backup takes over"): a worker
  // lost its primary and asks this backup to serve that range from its copy.
  void on_takeover(const comm::wire::Frame& frame, const ReplicaTakeover& ask);
  TakeoverReply takeover(const ReplicaTakeover& ask);
  // Starts serving `copy`'s range as its acting primary on a thread of this
  // process, at a new endpoint (returned).
  std::string start_acting(ReplicaState copy);
  // Where this server serves `primary`'s range, if it took it over.
  std::optional<std::string> acting_endpoint(uint32_t primary) const;
  // run()'s first and last steps: a replacement whose range a backup took
  // over retires (false: nothing to serve); at the end the acting primaries
  // are waited for (kFinished: until their workers finished, bounded) and
  // stopped.
  bool begin_serving(Deadline deadline);
  // Fencing (server_takeover.cpp, docs "Fencing"): a request of a term
  // above term_ means another server took this range over; from then on
  // every request is answered kFenced (true: answered here) and nothing
  // changes. fence() logs it once.
  bool fenced(const std::string& identity, uint32_t receiver, const Message& m);
  void fence(uint64_t term, const std::string& seen);
  // The kFenced answer to `request` (its kind and id), at the fencing term.
  Message fenced_reply(const Message& request) const;
  // A fenced server that hosts no acting primary ends run() (kFinished,
  // logged) once no worker is live in its view: its workers moved to the
  // range's holder and never say goodbye here.
  bool retire_fenced() const;
  void end_serving(ServeEnd end);
  struct ActingPrimaries;
  struct ActingDeleter {
    void operator()(ActingPrimaries* acting) const;
  };

  ConsistencyState consistency_;
  std::vector<Parked> parked_;
  std::vector<DeferredReply> deferred_;  // in the order they were deferred
  bool initialised_ = false;
  ShardPlan plan_;
  std::vector<SparseTableSpec> table_specs_;
  std::optional<DenseShard> dense_;
  std::vector<SparseTable> tables_;
  ServerStats counters_;
  // Per worker: whether it sent init to this process (a replacement serves
  // only workers that did), and the request id of its last push taken.
  std::vector<bool> joined_;
  std::vector<uint64_t> last_push_id_;
  uint64_t reported_version_ = 0;
  Clock::time_point started_ = Clock::now();
  // The backups of this server's range (replicas > 0, after
  // set_server_endpoints) and this server's copies of other servers' ranges.
  std::unique_ptr<BackupChain> backups_;
  ReplicaStore replica_store_;
  std::optional<ReplicaState> inherited_;
  // The ranges this server took over (their acting primaries), the primaries
  // whose replacement took this server's copy (never taken over then), and
  // run()'s deadline (the acting primaries serve until it).
  std::unique_ptr<ActingPrimaries, ActingDeleter> acting_;
  std::set<uint32_t> copy_given_;
  std::optional<int> acting_host_;  // set on an acting primary: the backup serving it
  // The term at which this server holds its range (0: its first primary; an
  // acting primary's is its copy's + 1), and, once fenced, the higher term
  // that fenced it and why.
  uint64_t term_ = 0;
  std::optional<uint64_t> fenced_term_;
  std::string fenced_why_;
  Deadline serve_deadline_ = Deadline::never();
  // Since when no worker is live (none finished): run() ends kAbandoned
  // once that lasts longer than max(heartbeat_timeout, join_timeout).
  std::optional<Clock::time_point> no_live_worker_since_;
  // By worker: its shared-memory segment, opened at its first push through
  // one; a held push's view keeps the one it lies in alive.
  std::vector<std::shared_ptr<ShmSegment>> shm_segments_;
};

}  // namespace dtrain::ps
