// The payloads servers send each other to replicate their state
// (docs/parameter-server.md, "Replicated server state"). They travel in the
// same comm/wire frames as the workers' requests (header, CRC, MAC), from a
// primary server's DEALER to its backup's ROUTER and back, and are told apart
// from ps messages (messages.h) by their first byte (kinds 96..101; ps kinds
// stay below 96).
//
//  - ReplicaUpdate: what a primary did to its state while it was at version
//    `base_version`, in the order it did it, ending at `new_version`: rows
//    created by reads (so that the backup's sparse blocks fill in the same
//    order, which Adam's per-block step count depends on) and the
//    optimizer steps of the version's close (the summed gradient and lr, the
//    same elementwise rule on the backup gives the same bits).
//  - ReplicaState: a primary's whole state (values, optimizer buffers, rows)
//    at `version`: the first transfer and every catch-up of a backup that
//    missed updates (a replacement backup, one that fell behind).
//  - ReplicaAck: the backup's answer to both: the version its copy is at, or
//    that it needs a ReplicaState.
//  - ReplicaFetch: a replacement primary asks a backup for its copy of the
//    range; the backup answers with a ReplicaState (or a ReplicaAck kNeedState
//    when it holds none, kTakenOver when it already serves the range itself).
//  - ReplicaTakeover: a worker that lost its connection to a primary asks
//    one of its backups to serve the range from its copy; the backup answers
//    a TakeoverReply: the endpoint where it serves the range, or why it
//    will not (no copy, a copy older than the worker's, the replacement
//    already took it).
//
// Every kind carries a u64 term after its 4-byte prefix (docs/
// parameter-server.md "Fencing"): update and state, the primary's term for
// its range; ack, the term the backup knows for the primary's range (higher
// than the update's once the backup took the range over: the primary is
// fenced); fetch, 0; takeover request, the term the worker knows for the
// range; takeover reply, the term at which the backup serves it.
//
// Thread safety: values. Decoding throws DataError naming the field; never
// blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "ps/sharding.h"
#include "tensor/state_dict.h"

namespace dtrain::ps {

enum class ReplicaKind : uint8_t {
  kUpdate = 96,
  kState = 97,
  kAck = 98,
  kFetch = 99,
  kTakeover = 100,
  kTakeoverReply = 101,
};

// Whether a payload is one of these (by its first byte) rather than a ps message.
bool is_replication_payload(std::span<const std::byte> payload);

struct ReplicaOp {
  enum class Kind : uint8_t { kDenseApply = 1, kRowsTouch = 2, kRowsApply = 3 };
  Kind kind = Kind::kDenseApply;
  uint32_t table = 0;          // rows only
  float lr = 0.0f;             // applies only
  std::vector<uint64_t> keys;  // rows only
  std::vector<float> floats;   // applies: the gradient (dense: the range; rows: keys * D)
};

struct ReplicaUpdate {
  uint64_t term = 0;
  uint32_t primary = 0;
  uint64_t base_version = 0;
  uint64_t new_version = 0;
  std::vector<ReplicaOp> ops;
};

struct ReplicaState {
  uint64_t term = 0;
  uint32_t primary = 0;
  uint64_t version = 0;
  std::vector<SparseTableSpec> tables;
  StateDict state;  // Server::state_dict()'s per-server layout
};

struct ReplicaAck {
  // kTakenOver: only to a fetch, the backup serves the range itself.
  enum class Status : uint8_t { kOk = 0, kNeedState = 1, kError = 2, kTakenOver = 3 };
  Status status = Status::kOk;
  uint64_t term = 0;
  uint32_t backup = 0;
  uint32_t primary = 0;
  uint64_t version = 0;  // the backup's copy of the primary's state is at this version
  std::string error;
};

struct ReplicaFetch {
  uint64_t term = 0;
  uint32_t primary = 0;  // whose range is asked for
};

// From a worker (its wire rank is checked against `worker`) to a backup of
// `primary`: this worker last pulled `primary`'s range at `version`.
struct ReplicaTakeover {
  uint64_t term = 0;
  uint32_t primary = 0;
  uint32_t worker = 0;
  uint64_t version = 0;
};

struct TakeoverReply {
  // kReplaced: the dead server's replacement took this backup's copy and
  // serves the range; the worker waits for it and asks no other backup.
  enum class Status : uint8_t { kServing = 0, kRefused = 1, kReplaced = 2 };
  Status status = Status::kRefused;
  uint64_t term = 0;
  uint32_t backup = 0;
  uint32_t primary = 0;
  uint64_t version = 0;  // the version the backup's copy was at when it took over
  std::string endpoint;  // kServing: where the range is served now
  std::string error;     // kRefused, kReplaced: why not
};

using ReplicaMessage = std::variant<ReplicaUpdate, ReplicaState, ReplicaAck, ReplicaFetch,
                                    ReplicaTakeover, TakeoverReply>;

std::vector<std::byte> encode_replica(const ReplicaUpdate& m);
std::vector<std::byte> encode_replica(const ReplicaState& m);
std::vector<std::byte> encode_replica(const ReplicaAck& m);
std::vector<std::byte> encode_replica(const ReplicaFetch& m);
std::vector<std::byte> encode_replica(const ReplicaTakeover& m);
std::vector<std::byte> encode_replica(const TakeoverReply& m);
ReplicaMessage decode_replica(std::span<const std::byte> payload);

}  // namespace dtrain::ps
