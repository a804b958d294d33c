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
//   Secure aggregation (fl.secure_aggregation; docs/fl-deploy.md "Secure
//   aggregation"): privacy's SecAgg messages (privacy/secagg.h) carried opaque.
//   kSecAggSetup  server -> client  i64 round | u32 session | u32 index |
//                              u32 clients | u32 threshold | u8 graph (0 full,
//                              1 harary) | u32 degree | u64 graph_seed |
//                              f32 clip | u64 vector_length | u32 min_survivors |
//                              f64 mean_samples (the weights' n_bar):
//                              sent just before the round's kTask; the
//                              client's SecAggConfig (round = session) and its
//                              id (index) among the round's clients
//   kSecAggBroadcast server -> client  i64 round | u32 session | u8 phase (1..3) |
//                              u64 count + count bytes: the server's message
//                              that opens `phase` (key directory, share
//                              bundle, unmask request)
//   kSecAggAnswer client -> server  i64 client | i64 round | u32 session |
//                              u8 phase (0..3) | i64 samples | f64 loss |
//                              i64 steps | u64 count + count bytes: the
//                              client's message of `phase`; samples, loss and
//                              steps are the round's plaintext metadata
//                              (zero except in phase 2, the masked input)
//
// decode_fl_message() treats its input as untrusted: an unknown kind,
// non-zero reserved bytes, a count that does not fit the bytes left, trailing
// bytes, a negative client id, a round below 1, a non-positive epochs or
// max_steps, a negative batch or deadline, a non-finite or negative mu, a
// partial byte other than 0 or 1, a SecAgg phase out of range (broadcast
// 1..3, answer 0..3), a graph byte other than 0 or 1, an index not below
// clients, a non-finite or non-positive clip or mean_samples: DataError naming the field and
// both values. The SecAgg messages inside are privacy's to validate. It never allocates more than
// the payload's own size implies. Semantic checks that need the server's state (the round, the
// model size, finite deltas, the client range) are RoundAggregator's (fl/update.h). Thread safety:
// pure functions. Never blocks.
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
  kSecAggSetup = 7,
  kSecAggBroadcast = 8,
  kSecAggAnswer = 9,
};
std::string_view to_string(FlKind kind);

// One round's work for one client.
struct FlTask {
  int64_t round = 0;
  int64_t deadline_ms = 0;
  LocalTraining training;  // optimizer not carried: the client uses its job's [optimizer]
  std::vector<float> weights;
};

// The secure aggregation of one round attempt, as the server tells a client.
struct FlSecAggSetup {
  int64_t round = 0;
  uint32_t session = 0;  // SecAggConfig::round: unique per round attempt of a server
  uint32_t index = 0;    // the client's SecAgg id in [0, clients)
  uint32_t clients = 0;
  uint32_t threshold = 0;
  uint8_t graph = 0;  // privacy::SecAggGraphKind
  uint32_t degree = 0;
  uint64_t graph_seed = 0;
  float clip = 1.0F;
  uint64_t vector_length = 0;
  uint32_t min_survivors = 0;
  double mean_samples = 0;  // n_bar of client_weight() (fl/private_update.h)
};

// One phase's SecAgg message, either way.
struct FlSecAggPayload {
  int64_t client = 0;  // kSecAggAnswer
  int64_t round = 0;
  uint32_t session = 0;
  uint8_t phase = 0;
  int64_t samples = 0;  // kSecAggAnswer
  double loss = 0.0;    // kSecAggAnswer
  int64_t steps = 0;    // kSecAggAnswer
  std::vector<std::byte> message;
};

// A decoded payload: `kind` says which fields hold it.
struct FlMessage {
  FlKind kind = FlKind::kJoin;
  int64_t client = 0;             // kJoin
  int64_t rounds_done = 0;        // kWait, kDone
  FlTask task;                    // kTask
  ClientUpdate update;            // kUpdate, kUpdateCompressed (without its delta)
  std::vector<std::byte> upload;  // kUpdateCompressed: the delta's UploadCodec message
  FlSecAggSetup secagg_setup;     // kSecAggSetup
  FlSecAggPayload secagg;         // kSecAggBroadcast, kSecAggAnswer
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
std::vector<std::byte> encode_secagg_setup(const FlSecAggSetup& setup);
// The client, samples, loss and steps fields are not sent.
std::vector<std::byte> encode_secagg_broadcast(const FlSecAggPayload& broadcast);
std::vector<std::byte> encode_secagg_answer(const FlSecAggPayload& answer);

// Throws DataError ("fl message: ...") for anything malformed (see above).
FlMessage decode_fl_message(std::span<const std::byte> payload);

}  // namespace dtrain::fl
