// The deployed federated protocol: the payloads a FlServer (ROUTER) and its
// FlClients (DEALER) exchange inside comm/wire frames (type kData, the
// job's id and, with a job secret, its MAC: comm/wire/framed_socket.h).
// docs/wire-format.md ("Federated learning") gives every layout byte by byte.
//
// Ranks on the wire: the server is rank 0 (kServerRank); client k is rank
// k + 1 (client_rank()).
//
// A payload is a u8 kind, three zero bytes, then the kind's body, all
// little-endian:
//   kJoin    client -> server  i64 client            "I am client k, give me work"
//                              (sent at start and every heartbeat interval
//                              while idle: the server's proof of life)
//   kTask    server -> client  i64 round | i64 deadline_ms (what the client
//                              has left to answer) | i64 epochs | i64 batch |
//                              f64 proximal_mu | i64 max_steps |
//                              u64 count + count f32 global weights
//   kUpdate  client -> server  i64 client | i64 round | i64 samples |
//                              f64 loss | i64 steps | u8 partial (0 or 1) |
//                              u64 count + count f32 delta (w_k - w)
//   kUpdateCompressed client -> server  the fields of kUpdate up to partial,
//                              then u64 count + count bytes: the delta as
//                              one UploadCodec message (fl/upload_codec.h),
//                              sent when the job's [compression] names a
//                              method; the server decodes it with its own
//                              codec (a refusal counts as a rejected update)
//   kWait    server -> client  i64 rounds_done: known, no task for you now
//   kDone    server -> client  i64 rounds_done: the job is over, exit
//
// decode_fl_message() treats its input as untrusted: an unknown kind,
// non-zero reserved bytes, a count that does not fit the bytes left, trailing
// bytes, a negative client id, a round below 1, a non-positive epochs or
// max_steps, a negative batch or deadline, a non-finite or negative mu, a
// partial byte other than 0 or 1: DataError naming the field and both
// values. It never allocates more than the payload's own size implies.
// Semantic checks that need the server's state (the round, the model size,
// finite deltas, the client range) are RoundAggregator's (fl/update.h).
// Thread safety: pure functions. Never blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "fl/client_trainer.h"
#include "fl/update.h"

namespace dtrain::fl {

inline constexpr uint32_t kServerRank = 0;
inline uint32_t client_rank(int64_t client) { return static_cast<uint32_t>(client + 1); }

enum class FlKind : uint8_t {
  kJoin = 1,
  kTask = 2,
  kUpdate = 3,
  kWait = 4,
  kDone = 5,
  kUpdateCompressed = 6,
};
std::string_view to_string(FlKind kind);

// One round's work for one client.
struct FlTask {
  int64_t round = 0;
  int64_t deadline_ms = 0;
  LocalTraining training;  // optimizer not carried: the client uses its job's [optimizer]
  std::vector<float> weights;
};

// A decoded payload: `kind` says which fields hold it.
struct FlMessage {
  FlKind kind = FlKind::kJoin;
  int64_t client = 0;             // kJoin
  int64_t rounds_done = 0;        // kWait, kDone
  FlTask task;                    // kTask
  ClientUpdate update;            // kUpdate, kUpdateCompressed (without its delta)
  std::vector<std::byte> upload;  // kUpdateCompressed: the delta's UploadCodec message
};

std::vector<std::byte> encode_join(int64_t client);
// The task's training.optimizer is not encoded.
std::vector<std::byte> encode_task(const FlTask& task);
std::vector<std::byte> encode_update(const ClientUpdate& update);
// `update`'s fields (its delta is not sent) and `upload`, the delta's
// UploadCodec message.
std::vector<std::byte> encode_compressed_update(const ClientUpdate& update,
                                                std::span<const std::byte> upload);
std::vector<std::byte> encode_wait(int64_t rounds_done);
std::vector<std::byte> encode_done(int64_t rounds_done);

// Throws DataError ("fl message: ...") for anything malformed (see above).
FlMessage decode_fl_message(std::span<const std::byte> payload);

}  // namespace dtrain::fl
