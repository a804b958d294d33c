#include "comm/collectives/collective_protocol.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

// Header layout (little-endian, 32 bytes):
//   0 u32 magic  4 u8 kind  5 u8 reduce  6 u8 dtype  7 u8 zero
//   8 i32 root  12 u32 zero  16 u64 count  24 u64 seq
void encode_header(const OpDescriptor& op, std::byte* dest) {
  ByteWriter w(kHeaderBytes);
  w.write_u32(kHeaderMagic);
  w.write_u8(static_cast<uint8_t>(op.kind));
  w.write_u8(static_cast<uint8_t>(op.reduce));
  w.write_u8(static_cast<uint8_t>(op.dtype));
  w.write_u8(0);
  w.write_i32(op.root);
  w.write_u32(0);
  w.write_u64(op.count);
  w.write_u64(op.seq);
  std::memcpy(dest, w.bytes().data(), kHeaderBytes);
}

// The header of `message`, or nullopt for a message without one (too short,
// or another magic).
std::optional<OpDescriptor> decode_header(std::span<const std::byte> message) {
  if (message.size() < kHeaderBytes) return std::nullopt;
  ByteReader r(message.first(kHeaderBytes), "collective header");
  if (r.read_u32("magic") != kHeaderMagic) return std::nullopt;
  OpDescriptor op;
  op.kind = static_cast<OpKind>(r.read_u8("kind"));
  op.reduce = static_cast<ReduceOp>(r.read_u8("reduce"));
  op.dtype = static_cast<Dtype>(r.read_u8("dtype"));
  r.read_u8("reserved");
  op.root = r.read_i32("root");
  r.read_u32("reserved");
  op.count = r.read_u64("count");
  op.seq = r.read_u64("seq");
  return op;
}

}  // namespace

std::string_view to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMean:
      return "mean";
    case ReduceOp::kMax:
      return "max";
  }
  return "unknown-reduction";
}

std::string_view to_string(OpKind kind) {
  switch (kind) {
    case OpKind::kAllreduce:
      return "allreduce";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kAllgather:
      return "allgather";
    case OpKind::kAllgatherv:
      return "allgatherv";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kSend:
      return "send";
    case OpKind::kSplit:
      return "split";
    case OpKind::kHostCheck:
      return "host check";
    case OpKind::kSparseAllreduce:
      return "sparse_allreduce";
  }
  return "unknown-operation";
}

std::string_view to_string(Dtype dtype) {
  switch (dtype) {
    case Dtype::kFloat32:
      return "floats";
    case Dtype::kBytes:
      return "bytes";
    case Dtype::kFloat16:
      return "fp16";
    case Dtype::kBFloat16:
      return "bf16";
  }
  return "unknown-dtype";
}

std::string OpDescriptor::describe() const {
  std::string text =
      seq == 0 ? fmt::format("{} ({} {}", to_string(kind), count, to_string(dtype))
               : fmt::format("{} #{} ({} {}", to_string(kind), seq, count, to_string(dtype));
  if (kind == OpKind::kAllreduce || kind == OpKind::kReduceScatter) {
    text += fmt::format(", {}", to_string(reduce));
  }
  if (root >= 0) text += fmt::format(", root {}", root);
  return text + ")";
}

CollectiveChannel::CollectiveChannel(Transport& transport, uint64_t tag, OpDescriptor op,
                                     Deadline deadline, std::atomic<uint64_t>* bytes_sent)
    : transport_(transport),
      tag_(tag),
      op_(op),
      deadline_(deadline),
      rank_(transport.rank()),
      size_(transport.size()),
      what_(op.describe()),
      bytes_sent_(bytes_sent) {}

void CollectiveChannel::send(int peer, std::span<const std::byte> payload) {
  // Header and payload go as two parts: a tcp lane writes both straight to
  // its socket and copies only what the socket does not take at once; other
  // transports join them into one buffer they take over (the one copy), so
  // that send() never waits for the bytes to leave.
  std::array<std::byte, kHeaderBytes> header{};
  encode_header(op_, header.data());
  const size_t bytes = kHeaderBytes + payload.size();
  try {
    transport_.send_parts(peer, tag_, header, payload, what_, deadline_);
    if (bytes_sent_ != nullptr) bytes_sent_->fetch_add(bytes, std::memory_order_relaxed);
  } catch (const CommError& e) {
    abort_peers(e.peer(), e.what());
    throw;
  }
}

void CollectiveChannel::recv_checked(int peer, size_t payload_bytes, const PayloadVisitor& use) {
  try {
    transport_.recv_visit(peer, tag_, what_, deadline_, [&](std::span<const std::byte> message) {
      check_header(peer, message, payload_bytes);
      use(message.subspan(kHeaderBytes));
    });
  } catch (const CommError& e) {
    abort_peers(e.peer(), e.what());
    throw;
  }
}

void CollectiveChannel::check_header(int peer, std::span<const std::byte> message,
                                     size_t payload_bytes) const {
  const std::optional<OpDescriptor> header = decode_header(message);
  if (!header) {
    throw CommError(peer, what_,
                    fmt::format("rank {} received a {}-byte message without a collective header "
                                "from rank {}",
                                rank_, message.size(), peer));
  }
  const OpDescriptor& theirs = *header;
  OpDescriptor expected = op_;
  if (payload_bytes == kAnySize) expected.count = theirs.count;
  if (!(theirs == expected)) {
    throw CommError(peer, what_,
                    fmt::format("{} on rank {} does not match {} from rank {}", op_.describe(),
                                rank_, theirs.describe(), peer));
  }
  if (payload_bytes != kAnySize && payload_bytes != kAnyPayload &&
      message.size() - kHeaderBytes != payload_bytes) {
    throw CommError(peer, what_,
                    fmt::format("rank {} expected a {}-byte chunk from rank {}, got {} bytes",
                                rank_, payload_bytes, peer, message.size() - kHeaderBytes));
  }
}

void CollectiveChannel::recv_into(int peer, std::span<std::byte> out) {
  // The payload goes straight into `out` where the transport can (a tcp
  // lane reads it there), the header into `header`; a message of another
  // size is checked whole, which names what differs.
  std::array<std::byte, kHeaderBytes> header{};
  try {
    transport_.recv_parts(peer, tag_, header, out, what_, deadline_,
                          [&](std::span<const std::byte> message) {
                            check_header(peer, message, out.size());  // throws
                            DTRAIN_CHECK(message.size() == kHeaderBytes + out.size(),
                                         "a {}-byte message passed the checks of a {}-byte chunk",
                                         message.size(), out.size());
                          });
    check_header(peer, header, kAnyPayload);
  } catch (const CommError& e) {
    abort_peers(e.peer(), e.what());
    throw;
  }
}

std::vector<std::byte> CollectiveChannel::recv_any_size(int peer) {
  std::vector<std::byte> out;
  recv_checked(peer, kAnySize, [&](std::span<const std::byte> payload) {
    out.assign(payload.begin(), payload.end());
  });
  return out;
}

std::vector<std::byte> CollectiveChannel::recv_variable(int peer) {
  std::vector<std::byte> out;
  recv_checked(peer, kAnyPayload, [&](std::span<const std::byte> payload) {
    out.assign(payload.begin(), payload.end());
  });
  return out;
}

void CollectiveChannel::recv_reduce(int peer, std::span<float> inout, ReduceOp op) {
  recv_combine(peer, inout, op, /*in_left=*/false);
}

void CollectiveChannel::recv_reduce_left(int peer, std::span<float> inout, ReduceOp op) {
  recv_combine(peer, inout, op, /*in_left=*/true);
}

void CollectiveChannel::recv_combine(int peer, std::span<float> inout, ReduceOp op, bool in_left) {
  // Each piece of the payload is combined as the transport hands it over:
  // over a tcp lane as soon as it is read (and MACed, still in cache),
  // before the frame's MAC is checked whole. When that check fails the call
  // throws naming the peer and `inout` holds garbage; the collective fails
  // (docs/collectives.md, "One pass over received bytes").
  std::array<std::byte, kHeaderBytes> header{};
  bool header_checked = false;
  const auto combine = [&](size_t offset, std::span<const std::byte> piece) {
    if (!header_checked) {
      check_header(peer, header, kAnyPayload);
      header_checked = true;
    }
    DTRAIN_CHECK(offset % sizeof(float) == 0 && piece.size() % sizeof(float) == 0,
                 "a {}-byte piece at byte {} of a float payload", piece.size(), offset);
    const std::span<float> out =
        inout.subspan(offset / sizeof(float), piece.size() / sizeof(float));
    // Straight from the received bytes when its floats are aligned (the
    // transport's buffer usually is); through a copy otherwise.
    if (reinterpret_cast<uintptr_t>(piece.data()) % alignof(float) == 0) {
      const auto* in = reinterpret_cast<const float*>(piece.data());
      reduce_into(out, std::span<const float>(in, out.size()), op, in_left);
      return;
    }
    staging_.resize(out.size());
    std::memcpy(staging_.data(), piece.data(), piece.size());
    reduce_into(out, staging_, op, in_left);
  };
  try {
    transport_.recv_fold(peer, tag_, header, inout.size_bytes(), what_, deadline_, combine,
                         [&](std::span<const std::byte> message) {
                           check_header(peer, message, inout.size_bytes());  // throws
                           DTRAIN_CHECK(false,
                                        "a {}-byte message passed the checks of a {}-byte chunk",
                                        message.size(), inout.size_bytes());
                         });
    if (!header_checked) check_header(peer, header, kAnyPayload);
  } catch (const CommError& e) {
    abort_peers(e.peer(), e.what());
    throw;
  }
}

void CollectiveChannel::abort_peers(int culprit, const std::string& reason) noexcept {
  if (aborted_) return;
  aborted_ = true;
  transport_.abort(culprit, reason);
}

void reduce_into(std::span<float> inout, std::span<const float> in, ReduceOp op, bool in_left) {
  float* __restrict out = inout.data();
  const float* __restrict src = in.data();
  const size_t n = inout.size();
  if (op == ReduceOp::kMax) {
    if (in_left) {
      for (size_t i = 0; i < n; ++i) out[i] = std::max(src[i], out[i]);
    } else {
      for (size_t i = 0; i < n; ++i) out[i] = std::max(out[i], src[i]);
    }
  } else if (in_left) {
    for (size_t i = 0; i < n; ++i) out[i] = src[i] + out[i];
  } else {
    for (size_t i = 0; i < n; ++i) out[i] += src[i];
  }
}

void reduce_pair(std::span<float> out, std::span<const float> a, std::span<const float> b,
                 ReduceOp op) {
  float* __restrict dst = out.data();
  const float* __restrict x = a.data();
  const float* __restrict y = b.data();
  const size_t n = out.size();
  if (op == ReduceOp::kMax) {
    for (size_t i = 0; i < n; ++i) dst[i] = std::max(x[i], y[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = x[i] + y[i];
  }
}

std::vector<size_t> block_offsets(size_t count, size_t parts) {
  std::vector<size_t> offsets(parts + 1);
  const size_t base = count / parts;
  const size_t extra = count % parts;
  for (size_t b = 0; b <= parts; ++b) offsets[b] = b * base + std::min(b, extra);
  return offsets;
}

}  // namespace dtrain::comm
