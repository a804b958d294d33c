// Client::Impl, the parameter-server client's private state (client.h holds
// the contract). Its members live in three files: client.cpp (connections,
// heartbeats, exchange() and its recovery, init, finish), client_dense.cpp
// (dense pull, push and push_and_pull) and client_rows.cpp (the sparse-row
// requests and the whole-state requests: stats, pull_state, load_state).
// Thread safety: the calling thread only, except the heartbeat thread, which
// uses its own sockets and only reads options_ and context_.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/deadline.h"
#include "ps/client.h"
#include "ps/compressed_push.h"
#include "ps/frame_pool.h"
#include "ps/shm_segment.h"

namespace dtrain::ps {

// The bytes of a float range, for Message::float_parts (no copy).
inline std::span<const std::byte> float_bytes(const float* data, int64_t count) {
  return std::as_bytes(std::span<const float>(data, static_cast<size_t>(count)));
}

class Client::Impl {
 public:
  // Validates the options, connects to every server and starts the heartbeat
  // thread (client.cpp).
  Impl(ClientOptions options, const comm::JobAuth& auth, Logger& logger);

  ~Impl() {
    heartbeat_.request_stop();
    heartbeat_cv_.notify_all();
  }

  int num_servers() const { return static_cast<int>(options_.server_endpoints.size()); }

  // One request per (server, message); replies in the same order. Throws
  // TimeoutError / CommError naming the server, `operation` and `awaited`.
  // A server whose connection breaks while a request waits gets the request
  // again (same id: the server answers a repeated push without applying it
  // twice); a replacement server that answers kRejoin is re-joined (rejoin())
  // and asked again. Each such recovery restarts the call's deadline, at most
  // kMaxRecoveries times per call.
  std::vector<Message> exchange(std::vector<std::pair<int, Message>> requests,
                                const std::string& operation, const std::string& awaited);
  struct Call;
  // exchange() in two halves, so that a second call's requests can follow
  // the first's before any reply (Client::push_and_pull): start() sends the
  // requests (draining the connection monitors first when
  // `drain_monitors`: a second call must not swallow a break the first one
  // has to see); finish() waits for the replies and throws as exchange()
  // does.
  Call start(std::vector<std::pair<int, Message>> requests, std::string operation,
             std::string awaited, bool drain_monitors = true);
  std::vector<Message> finish(Call& call);
  // The dense push's requests (arguments checked: UsageError) and outcome,
  // and the dense pull's requests and its copy into `out` (CommError for a
  // reply of the wrong size); client_dense.cpp.
  std::vector<std::pair<int, Message>> push_requests(const std::vector<Tensor>& grads,
                                                     const DensePush& push);
  std::vector<std::pair<int, Message>> pull_requests(uint64_t min_version) const;
  uint64_t take_pull(std::vector<Message>& replies, const std::vector<Tensor>& out);
  // take_pull()'s part for server `s`'s reply alone (its range copied into
  // `out`; the version, clock and totals left to the caller).
  void take_range(int s, Message& r, const std::vector<Tensor>& out);
  // exchange()'s parts: waits until every server of `call` answered (or
  // failed, or the deadline passed); takes one matching reply; restarts the
  // call's deadline for a recovery (false, and the server failed, after
  // kMaxRecoveries).
  void wait_for_replies(Call& call);
  void take_reply(Call& call, int server, Message& reply);
  bool recover(Call& call, int server, const char* why);
  // Sends `m` to `server` (assigning worker and, when 0, a new request id);
  // pushes are also kept in open_pushes_ until the next pull from `server`.
  void send(int server, Message& m);
  struct OpenPush;
  // Sends a kept push again (its payload as first sent).
  void send_again(int server, const OpenPush& push);
  // A replacement of `server` does not know this worker: sends it init (the
  // last pulled version and values, so that a replacement without a
  // checkpoint starts from them) and this worker's pushes since its last
  // pull from that server except request `except`, and waits for their
  // replies. CommError / TimeoutError naming the server otherwise.
  void rejoin(int server, uint64_t except, const std::string& operation);
  // The connection to `server` broke: with options_.replicas, asks its
  // backups, nearest first, to take its range over, and on the first yes
  // re-routes the range to the endpoint it names (client_takeover.cpp).
  // False when none did (each asked for at most options_.takeover_timeout;
  // one known dead, from a broken or refused connection, not at all): the
  // caller waits for the replacement. Logged either way, naming each
  // backup's answer.
  bool take_over(int server, const std::string& operation);
  // Whether `reply` is of a term older than the one this worker knows for
  // range `server` (logged, naming both terms and the holder: the caller
  // drops it); a newer term is adopted (docs "Fencing").
  bool stale_term(int server, const Message& reply);
  // ClientOptions::silent_takeover for `call`: probes the servers silent
  // past it and takes over those whose probe went unanswered as long again
  // (the request sent to the new holder; false when no backup took it and the
  // call goes on waiting). Returns the time of the next check.
  Deadline check_silence(Call& call);
  // Tells the process that served range `server` before a takeover, on the
  // socket it was reached by (kept open, `retired_`), that the range is at
  // terms_[server] now: a heartbeat it reads when it runs again (a stopped
  // primary), which fences it at once (client_takeover.cpp).
  void notify_fenced(int server, std::unique_ptr<comm::wire::FramedSocket> old);
  // A new DEALER socket to `server`'s range at `endpoint` (reads only
  // options_, context_, auth_, logger_: also used by the heartbeat thread).
  std::unique_ptr<comm::wire::FramedSocket> connect(int server, const std::string& endpoint);
  // Connects the range of `server` to `endpoint` (its socket, monitor and
  // the heartbeat thread's socket).
  void reroute(int server, const std::string& endpoint);
  // An inproc PAIR socket receiving ZMQ_EVENT_DISCONNECTED of sockets_[server].
  zmq::socket_t watch_disconnects(int server);
  // An inproc PAIR socket receiving the monitor `events` of `socket`.
  zmq::socket_t watch(comm::wire::FramedSocket& socket, int server, int events);
  // Whether monitor `server` reported a broken connection (drains it), or
  // note_breaks() saw one not yet acted on; either way the process serving
  // the range is marked dead_.
  bool disconnected(int server);
  // Drains every range's monitor but `except`'s: the processes whose
  // connection broke are marked dead_ at once, the breaks kept (broken_)
  // for disconnected().
  void note_breaks(int except);
  // The next frame from `server` whose payload decodes, if one is waiting
  // (the others are dropped, counted and logged by its socket).
  std::optional<std::pair<comm::wire::FrameHeader, Message>> next_message(int server);
  Message init_message(int server, uint64_t version) const;

  void require_init(const char* operation) const {
    if (!initialised_) {
      throw UsageError(
          fmt::format("ps client (worker {}): {} before init()", options_.worker, operation));
    }
    if (finished_) {
      throw UsageError(
          fmt::format("ps client (worker {}): {} after finish()", options_.worker, operation));
    }
  }
  void check_dense(const std::vector<Tensor>& tensors, const char* operation) const;
  SparseTableSpec check_rows(size_t table, std::span<const uint64_t> keys, const Tensor& t,
                             const char* operation) const;
  // Per server: the indices into `keys` of the keys it owns.
  std::vector<std::vector<size_t>> route(size_t table, std::span<const uint64_t> keys) const;
  // Copies `server`'s reply rows (float bytes of members.size() rows of
  // `spec`) to rows `members` of `out`; CommError naming the server and
  // `operation` for a reply of the wrong size (client_rows.cpp).
  static void scatter_rows(int server, const std::vector<size_t>& members,
                           std::span<const std::byte> rows, const SparseTableSpec& spec,
                           const Tensor& out, const char* operation);
  // push_step()'s prefetched rows from its replies (by server) into each
  // entry's out; `routes`: by entry, by server, the indices of its keys.
  void take_prefetch(const std::vector<Message>& replies, std::span<const RowPull> prefetch,
                     const std::vector<std::vector<std::vector<size_t>>>& routes);

  ClientOptions options_;
  comm::JobAuth auth_;
  Logger& logger_;
  std::optional<zmq::context_t> own_context_;  // when options_.context is null
  zmq::context_t& context_;                    // options_.context or own_context_
  std::vector<std::unique_ptr<comm::wire::FramedSocket>> sockets_;
  uint64_t next_request_ = 1;
  bool initialised_ = false;
  bool finished_ = false;
  ShardPlan plan_;
  std::vector<SparseTableSpec> tables_;
  uint64_t last_min_clock_ = 0;
  StepTotals last_totals_;
  std::vector<zmq::socket_t> monitors_;  // by server, after sockets_ (closed first)
  // By range: the server process that serves it now (its own server, or the
  // backup that took it over). By server: whether a backup took a range over
  // from it (it died; take_over() does not ask it, which would wait
  // options_.timeout for an answer).
  std::vector<int> serving_;
  std::vector<bool> dead_;
  // By range: a broken connection drained by note_breaks() and not yet
  // acted on (disconnected() reports it once).
  std::vector<bool> broken_;
  // By range: the term this worker knows (0 until a takeover; raised by a
  // takeover's answer and by newer replies), sent in every request.
  std::vector<uint64_t> terms_;
  // The sockets to processes that lost a range to a takeover, kept open so
  // that the heartbeat telling them the new term is delivered.
  std::vector<std::unique_ptr<comm::wire::FramedSocket>> retired_;
  int monitor_generation_ = 0;  // names each monitor's inproc address
  // By server: its range as this worker last pulled it (init's values before
  // the first pull), and the pushes sent to it since then, in send order.
  // A range is the float bytes of the pull reply that brought it, kept
  // alive by the reply's payload (no copy), or of init's values.
  struct Range {
    std::shared_ptr<const void> owner;
    std::span<const std::byte> bytes;
  };
  // A push as sent: its encoded payload, shared with ZeroMQ, sent again as is.
  struct OpenPush {
    uint64_t request_id = 0;
    uint64_t version = 0;
    std::shared_ptr<const std::vector<std::byte>> payload;
  };
  std::vector<Range> values_;
  std::vector<std::vector<OpenPush>> open_pushes_;
  // By server (docs/parameter-server.md "Shared memory for same-host
  // links"): this worker's segment for that range (null: the socket path),
  // made by init(), and the version of the push whose gradient lies in its
  // push region while the server may still view it (until a pull reply
  // carries a later version: the server closed or applied it).
  std::vector<std::shared_ptr<ShmSegment>> shm_;
  std::vector<std::optional<uint64_t>> shm_push_version_;
  void create_segments();
  // A dense push to `server` written into its segment instead of the
  // payload, when the push region is free (send()).
  void push_through_shm(int server, Message& m);
  // A reply naming shared memory: its floats viewed in the segment
  // (DataError when stale, out of bounds or of another segment).
  void resolve_shm_reply(int server, Message& m) const;
  uint64_t last_version_ = 0;  // the version of the last pull (init's before it)
  uint64_t joined_step_ = 0;
  uint64_t bytes_sent_ = 0;
  // The payload buffers of this worker's requests, reused (frame_pool.h).
  std::shared_ptr<FramePool> frames_ = FramePool::create();
  std::unique_ptr<PushCompressor> compressor_;  // made by init() when options_.compression is set
  PushCompressor& compressor(const char* operation) const {
    if (compressor_ == nullptr) {
      throw UsageError(fmt::format(
          "ps {} (worker {}): no compressor: {}", operation, options_.worker,
          initialised_ ? "ClientOptions::compression has method none" : "init() not called yet"));
    }
    return *compressor_;
  }

 private:
  void send_heartbeats(const std::stop_token& stop);

  std::mutex heartbeat_mutex_;
  std::condition_variable_any heartbeat_cv_;
  // By server: the endpoint that serves its range now (a backup's after a
  // takeover); guarded by heartbeat_mutex_, read by the heartbeat thread.
  std::vector<std::string> routes_;
  std::jthread heartbeat_;  // last member: stopped and joined first
};

// One exchange() in flight: the requests, the servers still to answer and
// the refusals collected so far.
struct Client::Impl::Call {
  std::vector<std::pair<int, Message>> requests;
  std::string operation;
  std::string awaited;
  Deadline deadline;
  std::map<int, size_t> pending;  // server -> index in requests
  std::vector<Message> replies;
  // Refusals are collected until every server answered (or the deadline), and
  // the lowest server's is thrown: the same failure gives the same error.
  std::map<int, std::exception_ptr> failures;
  // Servers whose request was sent again (a broken connection, a re-join):
  // a call that followed this one sends its request to them again too.
  std::set<int> resent;
  int recoveries = 0;
  // ClientOptions::silent_takeover: by server still to answer, when a frame
  // of it was last seen (or the wait began) and when a liveness probe was
  // sent to it, unanswered so far (client_takeover.cpp).
  struct Silence {
    std::chrono::steady_clock::time_point heard;
    std::optional<std::chrono::steady_clock::time_point> probed;
  };
  std::map<int, Silence> silence;

  void fail(int server, std::exception_ptr error) {
    failures.emplace(server, std::move(error));
    pending.erase(server);
  }
};

}  // namespace dtrain::ps
