// ps::Client: one worker's connection to the S servers of a parameter-server
// job (server.h), in the manner of ps-lite's KVWorker minus its singletons and
// its deadline-less Wait.
//
// The client connects one DEALER socket (comm/wire/framed_socket.h) per
// server; frames that fail validation or decoding are dropped and logged
// rate-limited, never returned to a call. Dense calls (init, pull, push) cut
// the flat key space with the ShardPlan (sharding.h) and talk to every
// server IN PARALLEL: all requests are sent first, then the replies
// collected. Sparse calls (pull_rows, push_rows) go only to the servers that
// own the keys. Every call has a deadline of options.timeout. Errors name the
// server (its index is also its wire rank and CommError::peer()), the
// operation and what was awaited:
//   "ps pull with rank 1: timed out after 30000 ms waiting for a reply from
//    server 1 (version >= 12)"                      (no answer at all)
//   "ps pull with rank 0: timed out after 2000 ms waiting for version >= 0 on
//    server 0 (staleness bound 2: ...)"             (a parked pull expired)
//   "ps push with rank 0: server 0 refused: duplicate push from worker 0 for
//    version 0"                                     (CommError)
// When several servers fail in one call, the lowest server's error is thrown.
// After an error the client stays usable: late replies to earlier requests
// are recognised by their request id and discarded.
//
// Server failures (docs/parameter-server.md "Failure semantics"): the client watches
// every server connection (a ZeroMQ socket monitor). When one breaks while a
// request waits, the request is sent again with the same id for the
// server's replacement (a server answers a repeated push without applying it
// twice). A replacement answers requests of a worker it has not met with
// kRejoin; the client then re-joins it on its own (init carrying its last
// pulled version and values, then its pushes since its last pull from that
// server, so that a sync version the predecessor held can close) and asks
// again. Each recovery restarts the call's deadline, at most 8 per call; the
// call's errors are as above otherwise. With ClientOptions::replicas > 0 a
// broken connection first asks the server's backups, nearest first, to take
// its range over (each asked for at most `takeover_timeout`; one whose
// connection refused or broke before is not asked); the first that does
// serves it at an endpoint of its own for the rest of the run, and this
// client re-routes the range there (requests, re-join, heartbeats). Without
// one that does, the client waits for the replacement as above. With
// `silent_takeover`, a server that answers nothing (not even a liveness
// probe) is taken over the same way. Fencing (docs/parameter-server.md
// "Fencing"): every request carries the term this client knows for its
// range (raised by a takeover); a reply of an older term is dropped and
// logged; a server that answers `fenced` (another took its range over) is
// replaced by the range's holder, asked of the backups as above; the old
// process gets one heartbeat of the new term on the connection it was
// reached by, which fences it should it run again.
//
// Liveness: a background thread (std::jthread, own sockets) sends a heartbeat
// to every server each heartbeat_interval. finish() tells the servers this
// worker is done; destroying a client without finish() looks to the servers
// like a crash (its heartbeats stop). A restarted worker rejoins by calling
// init() (which is also its hello) and then pull(). A worker the servers
// declared dead (silent for longer than their heartbeat_timeout, e.g. while
// stopped) gets CommError "worker 1 is dead; send init to rejoin" until it
// calls init() again.
//
// Calls and their order: init() first (every worker calls it with the same
// specs; the first init a server receives sets the initial values, later ones
// only check that the specs match), then any sequence of pull / push /
// pull_rows / push_rows; pull_state / load_state for checkpoints; finish().
// Tensors passed in are read or written only during the call.
//
// Ownership: owns its sockets and heartbeat thread (stopped and joined by the
// destructor). The Logger must outlive the client.
// Thread safety: one thread calls the methods of a client; the heartbeat
// thread is internal. Errors: UsageError for misuse (a call before init,
// tensors whose shapes or count do not match the init specs, a table or key
// count out of range), TimeoutError / CommError as above, ConfigError for
// invalid options. Blocking: each call blocks until every involved server
// replied or options.timeout passed.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "comm/transport/link_shaper.h"
#include "comm/wire/auth.h"
#include "compress/compressor.h"
#include "core/error.h"
#include "core/log.h"
#include "core/trace.h"
#include "ps/messages.h"
#include "ps/sharding.h"
#include "ps/state_layout.h"
#include "tensor/state_dict.h"
#include "tensor/tensor.h"

namespace zmq {
class context_t;
}  // namespace zmq

namespace dtrain::ps {

struct ClientOptions {
  int worker = 0;       // this worker's index in [0, num_workers)
  int num_workers = 1;  // N
  // Server endpoints by server index ("tcp://127.0.0.1:41234"); S = size().
  std::vector<std::string> server_endpoints;
  std::chrono::milliseconds timeout{30000};  // each call's deadline
  std::chrono::milliseconds heartbeat_interval{1000};
  uint64_t max_payload_bytes = uint64_t{1} << 31;
  // Emulated slow link for this worker's sockets (tests and benchmarks;
  // comm/transport/link_shaper.h): each send sleeps until its release time.
  std::optional<comm::LinkShaperOptions> link;
  // The servers' endpoints are ipc sockets in a private folder: frames go
  // without MAC and CRC (ServerOptions::private_ipc, which the servers must
  // set alike); the constructor refuses a folder others may enter.
  bool private_ipc = false;
  // With private_ipc: a dense push's gradient and its pull reply's range go
  // through a shared-memory segment per server in the folder of that
  // server's ipc endpoint (shm_segment.h; docs/parameter-server.md "Shared
  // memory for same-host links") instead of the socket.
  bool shm = true;
  // Compressed pushes (push() with PushCompression::compressed): method
  // kNone (the default) allows none, and the client's pushes are as before.
  compress::Options compression;
  // Timeline of push_and_pull() (core/trace.h), category "ps": "push"
  // (encoding and sending the pushes and the pulls), "pull" (waiting for
  // every reply and copying the parameters), inside it "push_reply" (until
  // every server took the push) and "pull_copy". Null: off. Must outlive
  // the client.
  TraceSink* trace = nullptr;
  // The servers' ServerOptions::replicas (R, sync only): when the connection
  // to a server breaks, its backups (the next R servers in ring order) are
  // asked to take its range over. 0: wait for the server's replacement.
  int replicas = 0;
  // Each "will you take over?" ask of one backup waits at most this (and at
  // most `timeout`), apart from the call's own deadline; a backup whose
  // endpoint refuses the connection (its process is gone) is skipped at once
  // and never asked again, nor is one whose connection broke before.
  std::chrono::milliseconds takeover_timeout{5000};
  // With replicas > 0, a primary that answers nothing at all is taken over
  // too (docs/parameter-server.md "Fencing"): when a request has waited
  // this long for its server without any frame from it, the client sends it
  // a liveness probe (a stats request, answered at once by a live server,
  // even one whose pull is parked on a sync barrier); when the probe too is
  // unanswered after as long again, the server is taken for silent (stopped,
  // hung, cut off) and its backups are asked as for a broken connection.
  // The takeover raises the range's term, which fences the silent server
  // should it come back. 0: only a broken connection triggers a takeover.
  std::chrono::milliseconds silent_takeover{0};
  // The ZeroMQ context of the client's sockets; not owned, must outlive the
  // client. A server_endpoints entry "inproc://NAME" needs the context of
  // the server bound there (a co-located server, ServerOptions::
  // inproc_endpoint). Null: the client's own (one I/O thread).
  zmq::context_t* context = nullptr;
};

// How one dense push travels: dense floats (the default), or compressed by
// the client's compressor (ClientOptions::compression) at `step` (counts the
// compressed pushes from 0: density warm-up, random draws).
struct PushCompression {
  bool compressed = false;
  int64_t step = 0;
};

// One dense push's arguments besides the gradients (Client::push has their
// contract).
struct DensePush {
  int64_t samples = 0;
  float lr = 0.0f;
  uint64_t version = 0;
  double loss_sum = 0.0;
  int64_t correct = 0;
  double compute_s = 0.0;
  PushCompression compression;
};

// A server declared this worker dead (it was silent past the heartbeat
// timeout, e.g. stopped) and the job goes on without it: not a failure of the
// job. The message says since when.
class WorkerLeftOut : public dtrain::CommError {
 public:
  using dtrain::CommError::CommError;
};

// Outcome of a dense push over all servers.
struct PushResult {
  int servers_applied = 0;  // servers that took the gradient (sync: into the current version)
  int servers_dropped = 0;  // sync, backup workers: servers that had already advanced
  uint64_t version = 0;     // the lowest server version reported in the replies
};

class Client {
 public:
  // Validates the options and connects (ZeroMQ connects lazily: no peer needs
  // to be up yet). Starts the heartbeat thread.
  Client(ClientOptions options, const comm::JobAuth& auth, Logger& logger);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  int worker() const;
  int num_servers() const;
  // The dense layout; valid after init().
  const ShardPlan& plan() const;
  const std::vector<SparseTableSpec>& tables() const;

  // Hello + initial values. `dense` in model order (names unique); `tables`
  // the embedding tables. Returns the lowest server version (0 on a fresh job,
  // the current one for a worker that rejoins). Pulls of other workers wait
  // for the first init.
  uint64_t init(const StateDict& dense, const std::vector<SparseTableSpec>& tables);
  // After init(): the step this worker is at in the running job, by the
  // servers' count (sync: the version; async/ssp: the pushes they took from
  // this worker index, the highest over the servers). 0 for a new job; a
  // restarted worker continues from it.
  uint64_t joined_step() const;

  // Copies the current parameters into `out` (shapes as in init, same order)
  // once every server's version is >= min_version (and, under SSP, the
  // staleness bound lets this worker go on). Returns the lowest version.
  uint64_t pull(const std::vector<Tensor>& out, uint64_t min_version = 0);
  // Pushes this worker's gradient (shapes as in init), computed from
  // `samples` samples (>= 0) at `version`, with learning rate `lr`.
  // `loss_sum` (NaN or inf pass through: a diverged loss is reported, not
  // refused) and `correct` (in [0, samples]) are this worker's step
  // statistics; in sync the servers sum them per version (last_totals()).
  // `compute_s` (finite, >= 0; 0: not measured) is the time this worker
  // spent computing the gradient; in sync last_totals().workers brings every
  // worker's back.
  // With `compression.compressed`, each server gets a compressed push
  // (compressed_push.h): per piece of each slice of its range (partial rows
  // and whole rows, push_pieces()) the compressor's message, or the floats
  // of a piece it does not compress; the compressor's residuals
  // carry what was not sent to the next compressed push. A server that
  // cannot decode a piece refuses the whole push (CommError "server 1
  // refused: push from worker 0: ...") and applies nothing.
  PushResult push(const std::vector<Tensor>& grads, int64_t samples, float lr, uint64_t version,
                  double loss_sum = 0.0, int64_t correct = 0, double compute_s = 0.0,
                  PushCompression compression = {});
  // push() then pull(out, min_version) in one round trip: the pulls go out
  // right behind the pushes, before any reply (a server answers one
  // connection's requests in order, so it takes the push before it
  // considers the pull), and the worker does not wait for the push's reply
  // to ask for its parameters. Errors as push()'s, then pull()'s: when the
  // push fails, its error is thrown and the pull's replies are discarded as
  // late ones. Each half is bounded by options.timeout (the pull's from the
  // push's last reply), as the two calls are. Returns the pull's version;
  // `result` (when not null) gets the push's outcome.
  uint64_t push_and_pull(const std::vector<Tensor>& grads, const DensePush& push,
                         const std::vector<Tensor>& out, uint64_t min_version,
                         PushResult* result = nullptr);
  // The minimum live clock the servers reported with the last pull (SSP).
  uint64_t last_min_clock() const;
  // Sync: server 0's totals of the last version it closed before answering
  // the last pull (a pull for version v + 1 gets version v's), summed over the
  // workers whose pushes that version aggregated, and each worker's samples
  // and compute seconds (workers, by worker index). Zeros (and no workers)
  // before the first version closed, and always in async/ssp.
  StepTotals last_totals() const;

  // Rows `keys` of table `table` into out [keys.size(), D]; missing rows are
  // created with their deterministic initial value.
  void pull_rows(size_t table, std::span<const uint64_t> keys, const Tensor& out);
  // Pushes gradient rows grads [keys.size(), D] for table `table` with `lr`
  // (duplicate keys are summed). async/ssp: applied at once (`version` is not
  // used). sync: `version` is the dense version the rows' gradient was
  // computed at; the servers hold the rows until that version closes and
  // apply them with the dense update and its lr (`lr` is not used),
  // sample-weighted by this worker's dense push of that version, which must
  // come after its row pushes; rows of a worker whose dense push is not
  // counted are discarded. servers_dropped counts servers whose version had
  // already closed (backup workers) or that hold a previous incarnation's
  // rows.
  PushResult push_rows(size_t table, std::span<const uint64_t> keys, const Tensor& grads, float lr,
                       uint64_t version = 0);
  // One table's gradient rows for push_step(): as push_rows()'s arguments
  // (grads [keys.size(), D]; its lr and version are the dense push's).
  struct RowPush {
    size_t table = 0;
    std::span<const uint64_t> keys;
    Tensor grads;
  };
  // push_rows() of every entry of `rows` (in order, each with push.lr and
  // push.version), then push_and_pull(grads, push, out, min_version), in
  // ONE request per server and one reply (Kind::kPush carrying the rows
  // and the pull): the server takes the parts in that order, so values,
  // versions and replication are those of the separate calls, bit for bit.
  // A server refuses the whole request, taking nothing, when any part is
  // bad (CommError naming it, as the separate calls' errors do). A
  // compressed push (push.compression.compressed) makes the separate calls.
  // Errors as the separate calls'; the operation is named "push". Returns
  // the pull's version; `result` (when not null) gets the dense push's
  // outcome.
  //
  // `prefetch` (not with a compressed push: UsageError) rides with the
  // pull: each entry's rows (pull_rows()'s arguments) are read by each
  // owning server when it answers the pull, that is once its version is
  // >= min_version (sync: after the version closed, with the rows it
  // updated; async/ssp: when the pull is answered), and copied into
  // `out` before the call returns. A server's reply without them is a
  // CommError naming it.
  struct RowPull {
    size_t table = 0;
    std::span<const uint64_t> keys;
    Tensor out;
  };
  uint64_t push_step(std::span<const RowPush> rows, const std::vector<Tensor>& grads,
                     const DensePush& push, const std::vector<Tensor>& out, uint64_t min_version,
                     PushResult* result = nullptr, std::span<const RowPull> prefetch = {});

  ServerStats stats(int server);
  // The whole job state, assembled from every server.
  PsState pull_state();
  // Replaces every server's state with `state` (after init(); its dense
  // names and shapes must match the init specs). Versions become state.version.
  void load_state(const PsState& state);

  // The compressor of compressed pushes (after init(), with
  // ClientOptions::compression set; UsageError otherwise): its state for
  // checkpoints (residuals, PowerSGD's Q), loaded back (UsageError for a
  // state of another method or slice list), or forgotten.
  compress::State compression_state() const;
  void load_compression_state(const compress::State& state);
  void reset_compression();

  // Bytes of the frames this client sent to the servers (header and payload,
  // requests sent again after a server failure included; heartbeats, which
  // another thread sends, not).
  uint64_t bytes_sent() const;

  // Goodbye to every server; afterwards only destruction is allowed.
  void finish();

 private:
  // Sends push_step()'s per-server requests one at a time (client_layers.h).
  friend class LayeredStep;
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::ps
