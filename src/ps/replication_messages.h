// The payloads servers send each other to replicate their state
// (docs/parameter-server.md, "Replicated server state"). They travel in the
// same comm/wire frames as the workers' requests (header, CRC, MAC), from a
// primary server's DEALER to its backup's ROUTER and back, and are told apart
// from ps messages (messages.h) by their first byte (kinds 96..99; ps kinds
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
//    when it holds none).
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

enum class ReplicaKind : uint8_t { kUpdate = 96, kState = 97, kAck = 98, kFetch = 99 };

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
  uint32_t primary = 0;
  uint64_t base_version = 0;
  uint64_t new_version = 0;
  std::vector<ReplicaOp> ops;
};

struct ReplicaState {
  uint32_t primary = 0;
  uint64_t version = 0;
  std::vector<SparseTableSpec> tables;
  StateDict state;  // Server::state_dict()'s per-server layout
};

struct ReplicaAck {
  enum class Status : uint8_t { kOk = 0, kNeedState = 1, kError = 2 };
  Status status = Status::kOk;
  uint32_t backup = 0;
  uint32_t primary = 0;
  uint64_t version = 0;  // the backup's copy of the primary's state is at this version
  std::string error;
};

struct ReplicaFetch {
  uint32_t primary = 0;  // whose range is asked for
};

using ReplicaMessage = std::variant<ReplicaUpdate, ReplicaState, ReplicaAck, ReplicaFetch>;

std::vector<std::byte> encode_replica(const ReplicaUpdate& m);
std::vector<std::byte> encode_replica(const ReplicaState& m);
std::vector<std::byte> encode_replica(const ReplicaAck& m);
std::vector<std::byte> encode_replica(const ReplicaFetch& m);
ReplicaMessage decode_replica(std::span<const std::byte> payload);

}  // namespace dtrain::ps
