// The parameter server's payloads: what follows the comm/wire/wire.h frame header
// in every frame between a ps::Client and a ps::Server. docs/parameter-server.md
// gives every layout byte by byte.
//
// A payload starts with a 24-byte prefix, all little-endian:
//   u8 kind | u8 status (replies; 0 in requests) |
//   u8 reply_to (replies: the kind of the request answered; 0 in requests) |
//   u8 flags (bit 0: a term follows; the other bits 0) |
//   u32 worker (requests: the sender's worker index; replies: the server index) |
//   u64 request_id | u64 version
// then, when flags bit 0 is set, u64 term (never 0: term 0, a range's first
// primary, is written by leaving the bit clear, so a job that never took a
// range over sends the bytes it sent before terms existed),
// then a body whose fields depend on the kind (and for replies on status and
// reply_to; Message documents them).
// Strings are u16 length + UTF-8 bytes, float arrays u64 count + count f32,
// key arrays u64 count + count u64; written and read by core/byte_codec.h.
//
// decode_message() treats its input as untrusted: an unknown kind or status,
// an unknown flag bit, a term flag with a zero or missing term, a count that
// does not fit the remaining bytes, trailing bytes, a non-finite lr or
// compute time, a negative dimension or sample count: DataError naming the
// field and both values. It never allocates more than the payload's own size
// implies. Encoding a message into a wire frame (header + payload) and
// decoding one back are pure functions; nothing here blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/wire/auth.h"
#include "ps/sharding.h"
#include "tensor/state_dict.h"

namespace dtrain::ps {

enum class Kind : uint8_t {
  kInit = 1,  // worker -> server: hello + dense specs, tables, this server's slice of values
  kPull = 2,  // worker -> server: min_version, wait_ms
  // worker -> server: version, samples, lr, this server's slice of the
  // gradient, then the row pushes riding with it (Message::rows) and
  // optionally the pull that follows it (Message::with_pull): a CTR step's
  // one request per server (Client::push_step)
  kPush = 3,
  kPullRows = 4,    // worker -> server: table, keys
  kPushRows = 5,    // worker -> server: table, lr, keys, gradient rows [k, D]
  kStats = 6,       // worker -> server: (no body)
  kGetState = 7,    // worker -> server: (no body)
  kSetState = 8,    // worker -> server: a StateDict in the per-server layout (server.h)
  kGoodbye = 9,     // worker -> server: the worker is finished
  kHeartbeat = 10,  // worker -> server: proof of life; never answered
  // worker -> server: a push (version, samples, lr, ...) whose gradient is
  // one entry per piece of each slice of the server's range (push_pieces(),
  // compressed_push.h), each dense floats or a compressor's message
  kPushCompressed = 11,
  kReply = 64,  // server -> worker: status, and the body of the request's reply
};
std::string_view to_string(Kind kind);

enum class ReplyStatus : uint8_t {
  kOk = 0,
  kDropped = 1,  // sync: a late push for an already aggregated version; nothing applied
  kError = 2,    // the request was refused; `error` says why; nothing changed
  kTimeout = 3,  // a parked pull waited out its wait_ms; `error` says for what
  // This server (a replacement for one that died) has not had this worker's
  // init yet; `error` says so. Nothing changed: the client re-joins (init,
  // its open pushes) and sends the request again.
  kRejoin = 4,
  // This worker was declared dead (silent past the heartbeat timeout) and
  // the job goes on without it; `error` says since when. Nothing changed.
  kLeftOut = 5,
  // This server no longer serves the range: a request or a replica ack
  // carried a higher term, another server took the range over
  // (docs/parameter-server.md "Fencing"). The reply's term is that higher
  // term; `error` names both. Nothing changed: the client asks the range's
  // backups who holds it now and sends the request there.
  kFenced = 6,
};

enum class WorkerState : uint8_t { kLive = 0, kDead = 1, kFinished = 2 };
std::string_view to_string(WorkerState state);

// What a server reports about itself (the kStats reply, ServeResult).
struct ServerStats {
  int server = 0;
  bool initialised = false;
  uint64_t version = 0;              // dense updates so far (sync: aggregated versions)
  std::vector<WorkerState> workers;  // per worker index
  std::vector<uint64_t> clocks;      // pushes per worker (SSP clocks)
  uint64_t min_clock = 0;            // over live workers (0 when none is live)
  uint64_t pushes_applied = 0;       // dense pushes taken into an update
  uint64_t pushes_dropped = 0;       // sync: late pushes answered kDropped
  uint64_t requests_rejected = 0;    // answered kError
  uint64_t frames_dropped = 0;       // failed decoding or authentication
  uint64_t sparse_rows = 0;          // rows held, all tables
  uint64_t parked_pulls = 0;         // pulls waiting for a version or the staleness bound
  // The server's system clock when it answered, in microseconds since the
  // Unix epoch: what workers align their timelines to (core/trace.h).
  int64_t clock_us = 0;
};

// One worker's part of a sync version: the samples of its dense push and the
// seconds it reported computing them (forward and backward, slowdown
// included; 0: not measured). Dynamic batch sizing feeds these to a
// BatchBalancer on every worker (strategy/ps_strategy.h).
struct WorkerStep {
  int64_t samples = 0;
  double compute_s = 0.0;
  bool counted = false;  // the version aggregated this worker's push
};

// The job-wide sums of one sync version: what the workers whose dense pushes
// it aggregated reported with them (loss summed over samples, correct
// predictions, samples), summed in worker-index order, and each worker's
// samples and compute seconds by worker index (zeros and counted = false for
// a worker whose push the version did not take, e.g. a dead one; empty before
// the first version closed).
struct StepTotals {
  double loss_sum = 0.0;
  int64_t correct = 0;
  int64_t samples = 0;
  std::vector<WorkerStep> workers;
};

// One piece of a compressed push (Kind::kPushCompressed; a slice's piece,
// slice_pieces()): the piece's gradient as floats (its compressor leaves it
// dense), or the compressor's message (compress::Compressor::encode) for the
// piece's layout. decode_message checks only the framing; the server checks
// each piece against its place in the plan (compressed_push.h).
struct PushPiece {
  bool compressed = false;
  std::vector<float> dense;        // !compressed: the piece's count floats
  std::vector<std::byte> message;  // compressed: the encoded message
};

// A float array that lies in the link's shared-memory segment
// (shm_segment.h; docs/parameter-server.md "Shared memory for same-host
// links") instead of the payload: on the wire, in place of the array's u64
// count, the count with bit 63 set, then u64 segment id | u64 offset (bytes
// into the region) | u64 sequence (the even value the region was written
// under). Only a dense kPush's gradient (the push region) and a pull reply's
// range (the pull region) may be sent so; the receiver checks the rest
// against its segment.
struct ShmFloats {
  bool present = false;
  uint64_t count = 0;  // floats
  uint64_t segment_id = 0;
  uint64_t offset = 0;
  uint64_t sequence = 0;
};

// One decoded payload. Which fields are meaningful depends on `kind` (and, for
// replies, on the request answered); the others stay empty.
struct Message {
  Kind kind = Kind::kHeartbeat;
  ReplyStatus status = ReplyStatus::kOk;
  Kind reply_to = Kind::kHeartbeat;  // replies only
  uint32_t worker = 0;               // requests: sender worker index; replies: server index
  uint64_t request_id = 0;
  // kPush, kPushCompressed, kPushRows: version the gradient was computed at; kInit: the last
  // version the worker pulled (0 for a new worker; a replacement server follows it); replies:
  // server version.
  uint64_t version = 0;
  // The term of the range this message is about (docs/parameter-server.md
  // "Fencing"): requests carry the term the worker knows for the range of the
  // server it sends to, replies the term at which the answering server holds
  // it. 0 for a range's first primary; each takeover raises it by one.
  uint64_t term = 0;

  // kInit: dense specs, tables and (floats) this server's slice of the values.
  std::vector<DenseSpec> dense;
  std::vector<SparseTableSpec> tables;
  // kPull: wait at most wait_ms for version >= min_version (and SSP's bound).
  uint64_t min_version = 0;
  uint32_t wait_ms = 0;
  // kPush / kPushCompressed / kPushRows.
  int64_t samples = 0;
  float lr = 0.0f;
  // kPush, kPushCompressed: the worker's step statistics (loss summed over its samples,
  // correct predictions), summed per version in sync, and the seconds it
  // spent computing the gradient (finite, >= 0; 0: not measured).
  double loss_sum = 0.0;
  int64_t correct = 0;
  double compute_s = 0.0;
  // kPushCompressed: the pieces, one per piece of each slice of the
  // server's range (ps::push_pieces(), in place of `floats`).
  std::vector<PushPiece> pieces;
  // kPullRows / kPushRows.
  uint32_t table = 0;
  std::vector<uint64_t> keys;
  // kInit values, kPush gradient, kPushRows gradient rows, replies to kPull
  // (the range) and kPullRows (rows [k, D]).
  std::vector<float> floats;
  // Encoding only (decode_message never sets it): when non-empty, the float
  // array of the body (kInit values, kPush and kPushRows gradients, replies
  // to kPull and kPullRows) is the concatenation of these byte ranges, each
  // little-endian f32 values, in place of `floats` (which must then be
  // empty): encode_message copies them straight into the payload, the one
  // copy of a dense push. Not owned: valid until encode_message returns.
  std::vector<std::span<const std::byte>> float_parts;
  // Decoded with FloatDecoding::kView (replies to kPull and kPullRows, and
  // the gradient of a kPush): the float array's bytes inside the decoded
  // payload, little-endian f32 at any alignment (read them with memcpy);
  // `floats` stays empty. Not owned: valid while the payload is
  // (payload_owner, when the decoder's caller set it).
  std::span<const std::byte> float_bytes;
  std::shared_ptr<const void> payload_owner;
  // Set by decode_message for kPush and kPushRows: whether `floats` (or a
  // viewed push's float_bytes) holds only finite values (checked while
  // copying, in cache, or in one read of the view; the server refuses an
  // update that does not). Not on the wire.
  bool floats_finite = true;
  // The float array's length: floats.size(), or float_bytes' floats.
  size_t float_count() const {
    return float_bytes.empty() ? floats.size() : float_bytes.size() / sizeof(float);
  }
  // Replies to kPull: the server's minimum live clock (SSP) and, in sync, the
  // totals of the last closed version (zeros before the first and in
  // async/ssp).
  uint64_t min_clock = 0;
  StepTotals totals;
  // Replies to kInit: the step this worker is at on the server (sync: the
  // version; async/ssp: the pushes the server took from this worker index).
  uint64_t clock = 0;
  // kSetState, replies to kGetState.
  StateDict state;
  // Replies to kStats.
  ServerStats stats;
  // Replies with status kError / kTimeout / kRejoin.
  std::string error;
  // kPush: row pushes taken before the dense gradient, as separate kPushRows
  // requests in this order would be (each kind kPushRows with table, lr,
  // keys and floats (or float_parts when encoding); version, worker and
  // request id are the push's). At most one level: a row push carries none.
  std::vector<Message> rows;
  // kPush: the push is followed by a pull (min_version, wait_ms), answered
  // in the push's reply; replies to kPush: the reply carries the pull's
  // body (min_clock, totals, the range's floats).
  bool with_pull = false;
  // kPush gradient, replies to kPull and kPush with a pull: the floats in
  // shared memory (encoded in place of floats / float_parts, which must
  // then be empty; decoded with FloatDecoding::kView only, float_bytes left
  // empty for the receiver to resolve against its segment).
  ShmFloats shm;
  // kPush with a pull: row pulls (each kind kPullRows: table and keys, all
  // owned by this server) answered with the pull, once the version it waits
  // for is reached: the next batch's rows with the values that version
  // left (Client::push_step's prefetch). Replies to kPush with a pull: the
  // rows of each, in the request's order (floats, float_parts or
  // float_bytes as for a kPullRows reply). At most one level.
  std::vector<Message> prefetch;
};

// The payload bytes of `message`. UsageError when both `floats` and
// `float_parts` are set, or a part is not a whole number of floats.
std::vector<std::byte> encode_message(const Message& message);
// The same, written into `buffer` (cleared first; its capacity kept: a
// reused frame buffer, ps/frame_pool.h).
std::vector<std::byte> encode_message(const Message& message, std::vector<std::byte> buffer);
// A size the payload of `message` does not exceed (string and spec fields
// aside, which grow the buffer): what to take from a FramePool.
size_t encoded_size_bound(const Message& message);

// How decode_message returns the float array of a reply to kPull or
// kPullRows, and the gradient of a dense kPush: copied into `floats`
// (kCopy), or as `float_bytes`, a view of the payload (kView: no copy; the
// caller keeps the payload alive: the server holds a sync push's payload
// until its version closes and sums straight from it). Other requests are
// always copied (the server keeps their floats).
enum class FloatDecoding : uint8_t { kCopy, kView };
// Parses a payload; DataError naming the field on anything malformed (a
// count larger than the bytes left, trailing bytes: the same checks for
// either decoding).
Message decode_message(std::span<const std::byte> payload,
                       FloatDecoding floats = FloatDecoding::kCopy);

// Whether little-endian f32 `bytes` (any alignment) hold only finite values:
// one read, no copy (a viewed push's check).
bool floats_finite_bytes(std::span<const std::byte> bytes);

// Every ps frame's header carries the message's request id as its sequence
// (the client's requests, the server's replies echo it). DataError unless
// `frame_sequence` equals `message.request_id`: on a link without MAC or
// CRC (private ipc) this is what catches a frame whose header and payload
// do not belong together.
void check_sequence(uint64_t frame_sequence, const Message& message);

// Global wire ranks of a ps job: servers are 0..S-1, workers S..S+N-1.
inline uint32_t server_rank(int server) { return static_cast<uint32_t>(server); }
inline uint32_t worker_rank(int num_servers, int worker) {
  return static_cast<uint32_t>(num_servers + worker);
}

}  // namespace dtrain::ps
