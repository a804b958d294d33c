// The framing every collective message carries, and the channel the
// algorithms send it through (internal to comm; strategies use
// comm/collectives/communicator.h).
//
// Each message starts with a 32-byte header naming the operation the sender
// is executing: (kind, reduction, dtype, root, element count, sequence
// number). The receiving CollectiveChannel compares it with the operation it
// executes itself and throws CommError naming both sides on any difference,
// e.g. "allreduce #12 (1000 floats, sum) on rank 0 does not match broadcast
// #12 (10 floats, root 1) from rank 1", so that ranks calling different
// collectives fail instead of hanging or reducing garbage. On any CommError
// (a mismatch, a dead or silent peer) the channel aborts the transport
// (Transport::abort), which tells every peer: their pending calls fail at
// once naming the same culprit rank instead of waiting for their deadline.
// The header layout is in docs/collectives.md.
//
// Ownership: a channel references the Transport for the duration of one
// collective. Thread safety: one channel per thread. Blocking: send() returns
// once the transport queued the message; receives wait until the channel's
// deadline (TimeoutError from the transport). Copies: on the send side none
// over a tcp lane when its socket takes the frame at once (header and
// payload go as two parts, Transport::send_parts), else one (header and
// payload into the buffer the transport takes over); none on the receive
// side beyond the transport's own (payloads are reduced or copied straight
// out of the received message).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "comm/collectives/collectives.h"
#include "comm/transport/transport.h"
#include "core/deadline.h"

namespace dtrain::comm {

enum class OpKind : uint8_t {
  kAllreduce = 1,
  kBroadcast = 2,
  kAllgather = 3,
  kAllgatherv = 4,
  kReduceScatter = 5,
  kBarrier = 6,
  kSend = 7,
  kSplit = 8,
  kHostCheck = 9,
  kSparseAllreduce = 10,
};

// What the elements of an operation are: float32, bytes, or float32 sent as
// 16-bit values (fp16 scaled per message, bf16).
enum class Dtype : uint8_t { kFloat32 = 1, kBytes = 2, kFloat16 = 3, kBFloat16 = 4 };

// "floats", "bytes", "fp16", "bf16".
std::string_view to_string(Dtype dtype);

std::string_view to_string(OpKind kind);

// What one rank is executing; equal on every rank for a well-formed program.
struct OpDescriptor {
  OpKind kind = OpKind::kAllreduce;
  ReduceOp reduce = ReduceOp::kSum;  // meaningful for allreduce, reduce_scatter
  Dtype dtype = Dtype::kFloat32;
  int32_t root = -1;   // broadcast root, -1 otherwise
  uint64_t count = 0;  // elements of the whole operation
  uint64_t seq = 0;    // position in the communicator's sequence of operations

  bool operator==(const OpDescriptor&) const = default;
  // "allreduce #12 (1000 floats, sum)", "broadcast #3 (10 floats, root 1)",
  // "allreduce #4 (1000 fp16, sum)"; without "#seq" while seq is 0 (not yet
  // executed).
  std::string describe() const;
};

inline constexpr size_t kHeaderBytes = 32;
inline constexpr uint32_t kHeaderMagic = 0x48435444;  // "DTCH" little-endian

class CollectiveChannel {
 public:
  // `transport` outlives the channel (it lives for one call of a collective),
  // and so does `bytes_sent` (when not null: the communicator's counter,
  // which every send() advances by the header and payload bytes).
  CollectiveChannel(Transport& transport, uint64_t tag, OpDescriptor op, Deadline deadline,
                    std::atomic<uint64_t>* bytes_sent = nullptr);

  int rank() const { return rank_; }
  int size() const { return size_; }
  const OpDescriptor& op() const { return op_; }
  Deadline deadline() const { return deadline_; }

  void send(int peer, std::span<const std::byte> payload);
  void send(int peer, std::span<const float> payload) { send(peer, std::as_bytes(payload)); }
  // Receives one message from `peer` into `out` (exactly its size).
  void recv_into(int peer, std::span<std::byte> out);
  void recv_into(int peer, std::span<float> out) { recv_into(peer, std::as_writable_bytes(out)); }
  // Receives one message of out.size() floats and combines it into `inout`
  // (kMean sums; the caller divides once at the end), piece by piece as the
  // transport reads it (Transport::recv_fold): when the frame's MAC fails at
  // the end, it throws CommError naming the peer and `inout` holds garbage.
  void recv_reduce(int peer, std::span<float> inout, ReduceOp op);
  // The same with the received values as the left operand: inout = received
  // (op) inout, so that two ranks combining one pair agree bit for bit.
  void recv_reduce_left(int peer, std::span<float> inout, ReduceOp op);
  // Receives one message of any size whose header matches apart from its
  // count (variable-size point-to-point messages) and returns its payload.
  std::vector<std::byte> recv_any_size(int peer);
  // Receives one message whose header matches exactly (count included) but
  // whose payload may have any size (sparse blocks) and returns its payload.
  std::vector<std::byte> recv_variable(int peer);
  // Aborts the transport naming `culprit` (at most once): every peer's
  // pending call fails with `reason`. Every send and receive calls it before
  // rethrowing a CommError, so one failure stops the whole group instead of
  // leaving the others to their deadlines.
  void abort_peers(int culprit, const std::string& reason) noexcept;

 private:
  // Receives a message and returns it with its header checked; the payload
  // starts at kHeaderBytes.
  // kAnySize accepts any payload size and count.
  static constexpr size_t kAnySize = ~size_t{0};
  // kAnyPayload accepts any payload size but checks the count.
  static constexpr size_t kAnyPayload = ~size_t{0} - 1;
  // Receives one message, checks its header, and hands its payload (in
  // place, valid during the call) to `use`; on any CommError tells the
  // peers, then rethrows.
  using PayloadVisitor = std::function<void(std::span<const std::byte>)>;
  void recv_checked(int peer, size_t payload_bytes, const PayloadVisitor& use);
  void recv_combine(int peer, std::span<float> inout, ReduceOp op, bool in_left);
  // Throws CommError unless `message` carries this operation's header and
  // `payload_bytes` of payload (or any, as the two constants above say).
  void check_header(int peer, std::span<const std::byte> message, size_t payload_bytes) const;

  Transport& transport_;
  uint64_t tag_;
  OpDescriptor op_;
  Deadline deadline_;
  int rank_;
  int size_;
  std::string what_;
  std::vector<float> staging_;  // recv_reduce of a misaligned payload
  std::atomic<uint64_t>* bytes_sent_;
  bool aborted_ = false;  // abort_peers() ran
};

// Element-wise combine of `in` into `inout`: inout = inout (op) in, or
// in (op) inout when `in_left` (the order matters for kMax of a NaN).
void reduce_into(std::span<float> inout, std::span<const float> in, ReduceOp op,
                 bool in_left = false);
// out = a (op) b, element-wise; kMean sums. `out` may alias neither input.
void reduce_pair(std::span<float> out, std::span<const float> a, std::span<const float> b,
                 ReduceOp op);

// Splits `count` elements into `parts` contiguous blocks whose sizes differ by
// at most one; returns parts + 1 offsets.
std::vector<size_t> block_offsets(size_t count, size_t parts);

// Number of messages a block of `elements` is sent in: ceil(elements /
// chunk_elements), and at least one, so every step carries a header.
inline size_t chunk_count(size_t elements, size_t chunk_elements) {
  return elements == 0 ? 1 : (elements + chunk_elements - 1) / chunk_elements;
}

}  // namespace dtrain::comm
