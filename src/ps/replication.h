// BackupChain: the primary side of server replication (Li et al., OSDI 2014,
// "Scaling Distributed Machine Learning with the Parameter Server", section
// 4.3: each server's key range is also held by the next servers in ring
// order). With R replicas, server s is the primary of its own range and
// ships every change of it to its backups (s+1) mod S, ..., (s+R) mod S,
// each of which keeps a copy in its ReplicaStore (replica_store.h).
//
// Protocol (synchronous, sync consistency only; docs/parameter-server.md):
//  1. The server records, in order, what changes its state while it is at
//     version v: rows a read created (record_touch) and, when v closes, the
//     optimizer steps of the close (record_dense, record_rows).
//  2. ship(v, v+1) sends that log as one ReplicaUpdate to every backup.
//  3. Each backup replays it and answers ReplicaAck(version v+1). The server
//     answers pulls only while replicated(version) holds: every backup that
//     is in step has acknowledged it, so a worker never sees state that a
//     backup does not hold.
//  4. A backup that answers kNeedState (it started empty, was replaced, or
//     missed an update) gets the primary's whole state (ReplicaState) at the
//     current version; updates shipped before it are covered by it.
//  5. Unacknowledged updates are resent every resend_interval (a backup acks
//     an update it already has again). A backup that has not acknowledged
//     within `timeout` is declared lagging: logged as an error naming the
//     backup, the range and the version, and pulls no longer wait for it (the
//     range is then unreplicated until it catches up); so is, at once, a
//     backup whose connection breaks (its process died). Nothing is queued for a
//     lagging backup; it is probed every resend_interval with an empty update
//     at the current version, gets the whole state when it answers kNeedState,
//     and counts again once it acknowledges the current version.
//
// Ownership: owns one DEALER socket per backup on the server's ZeroMQ
// context (which must outlive it) and the log. Thread safety: none (the
// server's serving thread). Never blocks: sockets are drained by service().
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/framed_socket.h"
#include "core/deadline.h"
#include "core/log.h"
#include "ps/replication_messages.h"

namespace dtrain::ps {

struct BackupChainOptions {
  int server = 0;  // the primary's index
  int num_servers = 1;
  int replicas = 0;  // R, 0 < R < S
  // All S servers' endpoints, by index; the backups' are used.
  std::vector<std::string> server_endpoints;
  std::chrono::milliseconds timeout{10000};  // ack deadline before a backup counts as lagging
  std::chrono::milliseconds resend_interval{500};
  // Largest frame taken from a backup (a fetch's answer is a whole state).
  uint64_t max_payload_bytes = uint64_t{1} << 31;
  // The backups' endpoints are ipc sockets in a private folder (no MAC, no
  // CRC: ServerOptions::private_ipc).
  bool private_ipc = false;
};

// The servers that back up `server`'s range, nearest first.
std::vector<int> backups_of(int server, int num_servers, int replicas);
// Whether `backup` holds a copy of `primary`'s range.
bool backs_up(int backup, int primary, int num_servers, int replicas);

class BackupChain {
 public:
  using Clock = std::chrono::steady_clock;

  BackupChain(zmq::context_t& context, BackupChainOptions options, const comm::JobAuth& auth,
              Logger& logger);
  ~BackupChain();
  BackupChain(const BackupChain&) = delete;
  BackupChain& operator=(const BackupChain&) = delete;

  // Names the range in log lines ("dense [0, 1234) and its sparse rows").
  void set_range(std::string range) { range_ = std::move(range); }

  void record_touch(uint32_t table, std::span<const uint64_t> keys);
  void record_dense(std::span<const float> grad, float lr);
  void record_rows(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                   float lr);
  // Sends the log as the update from `base_version` to `new_version`, then clears it.
  void ship(uint64_t base_version, uint64_t new_version);
  // The state changed other than through the log (first init, a restore):
  // every backup gets the whole state at the next service().
  void invalidate();

  // One poll item per backup socket, for the serving loop's poll.
  void add_poll_items(std::vector<zmq::pollitem_t>& items);
  // Reads the acks waiting, sends states to backups that need one
  // (`state()` builds it), resends, and declares lagging backups.
  void service(Clock::time_point now, uint64_t version, const std::function<ReplicaState()>& state);
  // A replacement primary's first step: asks the backups, nearest first, for
  // their copy of this server's range and returns the first one offered;
  // nullopt (logged, naming each backup and what it said) when none holds
  // one or none answers within `timeout` each. Blocks up to that long per
  // backup; call before serving.
  std::optional<ReplicaState> fetch(std::chrono::milliseconds timeout);
  // After fetch(): the backup that answered that it serves this range itself
  // (it took the range over when this server died); nullopt otherwise.
  std::optional<int> taken_over_by() const { return taken_over_by_; }
  // A backup answered with a term above the chain's (0): it took this
  // range over (docs "Fencing"); the server stops serving the range.
  struct Superseded {
    int backup = 0;
    uint64_t term = 0;
  };
  std::optional<Superseded> superseded() const { return superseded_; }
  // Whether every backup in step holds `version`.
  bool replicated(uint64_t version) const;

 private:
  struct Backup;
  void on_ack(Backup& b, const ReplicaAck& ack, uint64_t version);
  std::vector<std::byte> probe(uint64_t version) const;
  // One backup's answer to a fetch: its copy, or nullopt (logged).
  std::optional<ReplicaState> fetch_from(Backup& b, std::chrono::milliseconds timeout);
  void send(Backup& b, std::vector<std::byte> payload, Clock::time_point now);
  // Whether b's connection broke since the last call (drains its monitor).
  static bool disconnected(Backup& b);
  // Declares b lagging when its connection broke or an ack is past `timeout`.
  void check_deadline(Backup& b, Clock::time_point now, uint64_t version);

  BackupChainOptions options_;
  Logger& logger_;
  std::string range_;
  std::vector<ReplicaOp> log_;
  std::vector<std::unique_ptr<Backup>> backups_;
  std::optional<int> taken_over_by_;
  std::optional<Superseded> superseded_;
};

}  // namespace dtrain::ps
