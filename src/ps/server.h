// ps::Server: one parameter server of a job with S servers and N workers.
//
// A server holds its range of the dense key space (sharding.h) and the sparse
// rows whose keys hash to it, and updates both with the core optimizers
// (optim::make_update_rule over its shard tensors' shapes; the rules
// are elementwise, so a shard update equals the full-tensor update). It knows
// no model: the dense layout and the sparse tables arrive with the first
// worker's init request (client.h), which every later init must match.
//
// Transport: ZeroMQ directly, not comm::ZmqTransport (which fails its whole
// group when one peer dies; a server must outlive its workers). The server
// binds one ROUTER socket (comm/wire/framed_socket.h); each worker's Client
// connects DEALER sockets to it. Every frame is a comm/wire/wire.h header
// (job id, sender, receiver, CRC-32C and, with a job secret, a MAC) followed
// by a ps payload (messages.h). Frames that fail decoding or authentication
// are dropped, counted (ServerStats::frames_dropped) and logged rate-limited
// (the first 16, then every 1024th), never answered and never change state;
// requests that decode but are invalid (unknown table,
// wrong size, stale or duplicate push, worker index out of range, a worker
// declared dead) get an error reply naming the problem and change nothing.
//
// Consistency (docs/parameter-server.md; the rules live in consistency_state.h,
// this class decodes requests, answers them and applies the updates):
//  - kSync: for version v the server waits for one push from every live
//    worker (the first N_live - backup_workers with backup workers), holding
//    each by worker index, then applies ONE update with
//    g = sum_i n_i g_i / sum_i n_i summed in worker-index order (arrival order
//    does not change a bit; no update when every n_i is 0, the version
//    advances anyway) and the lowest-index worker's lr, and moves to v + 1.
//    Row pushes for v are held the same way and applied at v's close with the
//    dense update (per row sum_i n_i g_i / sum_i n_i over the workers whose
//    dense push counts; rows of the others are discarded); a row push after
//    the worker's own dense push of v is refused. The workers' step
//    statistics (loss sum, correct) are summed per version and sent with
//    every pull reply (the last closed version's). Pulls asking for
//    min_version > v are parked until then. A push for another version, or a
//    second push of a worker for v, is rejected; a late push for v - 1 from a
//    worker that had not pushed is answered "dropped" (backup workers), and so
//    is the push for v of a restarted worker whose previous incarnation had
//    already pushed for v (its gradient is not counted twice).
//  - kAsync: every push is applied at once with its own lr; version + 1.
//  - kSsp (Ho et al. 2013, bounded staleness s): pushes applied at once; each
//    worker's clock counts its pushes; a pull from a worker at clock c is
//    parked until every live worker's clock is >= c - s.
//  In kAsync and kSsp row pushes are applied at once (their lr, as sent).
//
// Liveness: any frame from a worker (requests or the client's heartbeats)
// proves it alive; a worker silent for heartbeat_timeout is declared dead
// (logged with the time it had been silent) and no longer counts in sync
// barriers or SSP's minimum clock. Every worker counts as alive from the
// server's start, so a worker that never connects is declared dead after
// max(heartbeat_timeout, join_timeout). A dead worker's requests are refused until it sends init
// again (a restarted worker's hello): it then rejoins at the current version
// (SSP: at the slowest live worker's clock). A worker that said goodbye is
// finished and no longer counts either.
//
// Ownership: the server owns its sockets and state; the Logger must outlive
// it. Thread safety: run() on one thread at a time; endpoint() from any
// thread; state_dict()/stats() only while run() is not executing. Errors:
// the constructor throws ConfigError for invalid options and CommError when
// the endpoint cannot be bound. run() never blocks longer than poll_interval
// past its stop request or deadline, and no park outlives the requesting
// client's deadline.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "comm/transport/link_shaper.h"
#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/log.h"
#include "optim/optimizer_config.h"
#include "ps/messages.h"
#include "tensor/state_dict.h"

namespace zmq {
class context_t;
}  // namespace zmq

namespace dtrain::ps {

enum class Consistency { kSync, kAsync, kSsp };

std::string_view to_string(Consistency consistency);
// "sync" | "async" | "ssp"; ConfigError otherwise.
Consistency parse_consistency(std::string_view text);

// What a replacement server restores at its first init: a checkpoint's
// "model" and "optimizer" sections as the trainer wrote them (the job state of
// ps/state_layout.h, independent of S and N; this server takes its shard).
struct ServerRestore {
  StateDict model;
  StateDict optimizer;
  std::string origin;  // names the checkpoint in the log ("out/ckpt-120.dtck, step 120")
};

struct ServerOptions {
  int server = 0;       // this server's index in [0, num_servers)
  int num_servers = 1;  // S
  int num_workers = 1;  // N
  // Where to bind: "tcp://HOST:PORT" (port 0: any free port) or "ipc://PATH".
  std::string bind_endpoint = "tcp://127.0.0.1:0";
  Consistency consistency = Consistency::kSync;
  int backup_workers = 0;            // sync: aggregate the first N_live - b pushes; 0 <= b < N
  int staleness_bound = 0;           // ssp: s >= 0
  optim::OptimizerConfig optimizer;  // lr here is only the initial value: pushes carry theirs
  uint64_t seed = 0;                 // sparse row initialisation
  std::chrono::milliseconds heartbeat_timeout{10000};
  // How long a worker this server has not heard from at all may take to send
  // its first frame (its process start and data loading) before it is
  // declared dead; the larger of this and heartbeat_timeout applies.
  std::chrono::milliseconds join_timeout{0};
  std::chrono::milliseconds poll_interval{20};  // socket poll; bounds stop latency
  uint64_t max_payload_bytes = uint64_t{1} << 31;
  // Recovery (docs/parameter-server.md "Failure semantics"): this process replaces a
  // server of the job that died. No worker has sent it init yet; each one
  // re-joins when it finds the new incarnation (ps::Client does it on its
  // own). At its first init it takes that init's values (the worker's last
  // pulled parameters: in sync exactly those of the version it is at, newer
  // than any checkpoint) and, from `restore` when given, the optimizer
  // buffers, the sparse rows and the version; without `restore`, fresh
  // optimizer state and rows. Its version then follows the workers' (an init
  // or push carrying a higher version moves it there). What is lost: the
  // optimizer buffers' and rows' updates since the checkpoint (sync with
  // plain SGD and no embeddings: nothing).
  bool replacement = false;
  std::optional<ServerRestore> restore;
  // Called on the serving thread each time the version advances (tests and
  // benchmarks: a kill switch at a chosen version). May be empty.
  std::function<void(uint64_t version)> on_version;
  // Replicated server state (docs/parameter-server.md, "Replicated server
  // state"; replication.h): R > 0 backup servers hold a copy of this
  // server's range (the next R in ring order) and it holds one of the R
  // before it; sync only, R < S. Pulls are answered only once every backup
  // in step has acknowledged the version; a backup silent past
  // replica_timeout is logged and no longer waited for. Needs
  // set_server_endpoints() before run(). 0: no replication. Fencing
  // (docs/parameter-server.md "Fencing"): a server serves its range at a
  // term (0; an acting primary at its takeover's); a request or a backup's
  // ack of a higher term stops it serving the range for good (requests are
  // answered kFenced, logged once), and run() then ends kFinished once no
  // worker is live in its view and it hosts no acting primary.
  int replicas = 0;
  std::chrono::milliseconds replica_timeout{10000};
  std::chrono::milliseconds replica_resend_interval{500};
  // Emulated slow link for the server's socket (tests and benchmarks;
  // comm/transport/link_shaper.h): each reply sleeps until its release time.
  std::optional<comm::LinkShaperOptions> link;
  // Every endpoint of the job (this one and the other servers') is an ipc
  // socket in a private folder: frames go without MAC and CRC
  // (comm::wire::FramedSocketOptions::private_ipc; the constructor refuses a
  // folder others may enter). Workers must set ClientOptions::private_ipc
  // alike.
  bool private_ipc = false;
  // With private_ipc on an ipc endpoint: a dense push's gradient and the
  // pull reply's range travel through the worker's shared-memory segment in
  // the endpoint's folder (shm_segment.h) when the worker sends them so;
  // false refuses such pushes and answers every pull through the socket.
  bool shm = true;
  // Co-location (strategy/ps_colocated.h): a second endpoint,
  // "inproc://NAME", bound beside bind_endpoint, where the client of the
  // worker process hosting this server connects (no I/O thread, no kernel
  // copy; frames are checked as on bind_endpoint). Needs `context` to be that
  // client's. Empty: none.
  std::string inproc_endpoint;
  // The ZeroMQ context of the server's sockets; not owned, must outlive the
  // server. Null: the server's own (one I/O thread).
  zmq::context_t* context = nullptr;

  // How long a worker is given to (re)appear: one never heard from is
  // declared dead after it, and a server whose workers are all dead waits it
  // for one to rejoin before run() ends kAbandoned.
  std::chrono::milliseconds rejoin_window() const {
    return std::max(heartbeat_timeout, join_timeout);
  }
};

// Why run() returned.
enum class ServeEnd { kFinished, kStopped, kDeadline, kAbandoned };

struct ServeResult {
  ServeEnd end = ServeEnd::kStopped;
  ServerStats stats;
};

class Server {
 public:
  // Validates the options and binds the socket (the port is chosen now).
  Server(ServerOptions options, const comm::JobAuth& auth, Logger& logger);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound endpoint with the real port ("tcp://127.0.0.1:41234"), to be
  // published at the rendezvous.
  const std::string& endpoint() const;
  const ServerOptions& options() const;

  // Every server's endpoint, by index (this one's included): where the
  // backups of this server's range are (options().replicas > 0). Call once,
  // before run(). UsageError when the count is not num_servers.
  void set_server_endpoints(std::vector<std::string> endpoints);

  // Serves requests until every worker is finished or dead with at least one
  // finished (kFinished), `stop` is requested (kStopped) or `deadline` passes
  // (kDeadline), or every worker has been dead, none finished, for longer
  // than max(heartbeat_timeout, join_timeout) (kAbandoned: nobody is left to
  // rejoin; without it a server whose workers all died would wait forever).
  // Parked pulls still waiting are answered with an error.
  ServeResult run(std::stop_token stop, Deadline deadline = Deadline::never());

  // This server's state in the per-server layout of messages.h (dense range,
  // optimizer buffers, sparse rows); a deep copy.
  StateDict state_dict() const;
  ServerStats stats() const;
  // This server's copy of server `primary`'s state (state_dict()'s layout,
  // "version" in the metadata; empty when it holds none). Only while run()
  // is not executing.
  StateDict replica_state_dict(int primary) const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::ps
