#include "comm/wire/wire.h"

#include <algorithm>

#include "core/byte_codec.h"
#include "core/crc32c.h"
#include "core/error.h"

namespace dtrain::comm::wire {

namespace {

// The header's fields are written and read in the order of
// docs/wire-format.md; the MAC, its last field, starts here.
constexpr size_t kOffMac = 56;
static_assert(kOffMac + kMacBytes == kHeaderBytes);

bool known_type(uint8_t t) {
  switch (static_cast<MessageType>(t)) {
    case MessageType::kData:
    case MessageType::kHeartbeat:
    case MessageType::kGoodbye:
    case MessageType::kAbort:
    case MessageType::kPeerHello:
    case MessageType::kPeerData:
    case MessageType::kPeerCall:
    case MessageType::kPeerReply:
    case MessageType::kRegister:
    case MessageType::kTable:
    case MessageType::kReject:
    case MessageType::kStatus:
      return true;
  }
  return false;
}

bool from_coordinator(MessageType t) {
  return t == MessageType::kTable || t == MessageType::kReject || t == MessageType::kStatus;
}

std::string describe_rank(uint32_t rank) {
  return rank == kCoordinator ? std::string("coordinator") : fmt::format("{}", rank);
}

[[noreturn]] void fail(const std::string& problem) {
  throw DataError(fmt::format("wire frame rejected: {}", problem));
}

}  // namespace

std::string_view to_string(MessageType type) {
  switch (type) {
    case MessageType::kData:
      return "data";
    case MessageType::kHeartbeat:
      return "heartbeat";
    case MessageType::kGoodbye:
      return "goodbye";
    case MessageType::kAbort:
      return "abort";
    case MessageType::kPeerHello:
      return "peer hello";
    case MessageType::kPeerData:
      return "peer data";
    case MessageType::kPeerCall:
      return "peer call";
    case MessageType::kPeerReply:
      return "peer reply";
    case MessageType::kRegister:
      return "register";
    case MessageType::kTable:
      return "table";
    case MessageType::kReject:
      return "reject";
    case MessageType::kStatus:
      return "status";
  }
  return "unknown";
}

HeaderBytes encode_header(const FrameHeader& header, std::span<const std::byte> payload,
                          const JobAuth& auth, bool with_crc) {
  return encode_header(header, {}, payload, auth, with_crc);
}

HeaderBytes encode_header(const FrameHeader& header, std::span<const std::byte> head,
                          std::span<const std::byte> body, const JobAuth& auth, bool with_crc) {
  uint8_t flags = 0;
  if (with_crc) flags |= kFlagCrc;
  if (auth.enabled()) flags |= kFlagMac;
  ByteWriter w(kHeaderBytes);
  w.write_u32(kMagic);
  w.write_u8(kVersion);
  w.write_u8(static_cast<uint8_t>(header.type));
  w.write_u8(flags);
  w.write_u8(0);  // reserved
  w.write_u32(header.sender);
  w.write_u32(header.receiver);
  w.write_u64(header.job_id);
  w.write_u64(header.sequence);
  w.write_u64(header.tag);
  w.write_u64(head.size() + body.size());
  w.write_u32(with_crc ? crc32c_extend(crc32c(head.data(), head.size()), body.data(), body.size())
                       : 0u);
  w.write_u32(0);  // reserved
  DTRAIN_CHECK(w.size() == kOffMac, "header fields end at {}, the MAC starts at {}", w.size(),
               kOffMac);
  HeaderBytes bytes{};  // the MAC field stays zero unless signed
  std::copy(w.bytes().begin(), w.bytes().end(), bytes.begin());
  if (auth.enabled()) {
    // The MAC covers the header with its MAC field still zero.
    Mac mac = auth.mac(std::span<const std::byte>(bytes), head, body);
    std::copy(mac.begin(), mac.end(), bytes.begin() + kOffMac);
  }
  return bytes;
}

namespace {

// decode_header's checks of the decoded fields against this process: the
// job, the ranks, the payload limit and the CRC and MAC flags (fail()s).
void check_header(const FrameHeader& h, const FrameLimits& limits, const JobAuth& auth) {
  if (h.job_id != limits.job_id) {
    fail(
        fmt::format("job id 0x{:016x} does not match this job's 0x{:016x} (a process of another "
                    "job?)",
                    h.job_id, limits.job_id));
  }
  const bool coordinator_sender = h.sender == kCoordinator && from_coordinator(h.type);
  if (!coordinator_sender && h.sender >= limits.world_size) {
    fail(fmt::format("sender rank {} is out of range for world size {}", describe_rank(h.sender),
                     limits.world_size));
  }
  if (from_coordinator(h.type) && h.sender != kCoordinator) {
    fail(fmt::format("{} frame from rank {}, only the coordinator sends it", to_string(h.type),
                     h.sender));
  }
  if (limits.receiver != kAnyReceiver && h.receiver != limits.receiver) {
    fail(fmt::format("frame addressed to rank {}, this is rank {}", describe_rank(h.receiver),
                     describe_rank(limits.receiver)));
  }
  if (h.payload_bytes > limits.max_payload_bytes) {
    fail(fmt::format("payload of {} bytes exceeds the maximum of {} bytes", h.payload_bytes,
                     limits.max_payload_bytes));
  }
  if ((h.flags & kFlagCrc) == 0 && h.payload_crc != 0) {
    fail(fmt::format("CRC field is 0x{:08x} but the CRC flag is clear", h.payload_crc));
  }
  const bool has_mac = (h.flags & kFlagMac) != 0;
  if (has_mac && !auth.enabled()) {
    fail("frame carries a MAC but this process has no job secret (secrets differ?)");
  }
  if (!has_mac && auth.enabled()) {
    fail("frame is not authenticated but this job requires a secret");
  }
  if (!has_mac &&
      std::any_of(h.mac.begin(), h.mac.end(), [](std::byte b) { return b != std::byte{0}; })) {
    fail("MAC field is not zero but the MAC flag is clear");
  }
}

}  // namespace

FrameHeader decode_header(std::span<const std::byte> bytes, const FrameLimits& limits,
                          const JobAuth& auth) {
  if (bytes.size() != kHeaderBytes) {
    fail(fmt::format("header is {} bytes, expected {}", bytes.size(), kHeaderBytes));
  }
  ByteReader r(bytes, "wire header");
  const uint32_t magic = r.read_u32("magic");
  if (magic != kMagic) {
    fail(fmt::format("bad magic 0x{:08x}, expected 0x{:08x} (\"DTRN\"): not a dtrain frame", magic,
                     kMagic));
  }
  const uint8_t version = r.read_u8("version");
  if (version != kVersion) {
    fail(fmt::format(
        "wire version {}, this build speaks version {} (a peer running another dtrain release: "
        "run one release on every host)",
        version, kVersion));
  }
  const uint8_t type = r.read_u8("type");
  if (!known_type(type)) fail(fmt::format("unknown message type {}", type));
  const uint8_t flags = r.read_u8("flags");
  if ((flags & ~(kFlagCrc | kFlagMac)) != 0) {
    fail(fmt::format("unknown flag bits 0x{:02x}", flags & ~(kFlagCrc | kFlagMac)));
  }
  const uint8_t reserved8 = r.read_u8("reserved");

  FrameHeader h;
  h.type = static_cast<MessageType>(type);
  h.flags = flags;
  h.sender = r.read_u32("sender");
  h.receiver = r.read_u32("receiver");
  h.job_id = r.read_u64("job id");
  h.sequence = r.read_u64("sequence");
  h.tag = r.read_u64("tag");
  h.payload_bytes = r.read_u64("payload bytes");
  h.payload_crc = r.read_u32("payload crc");
  const uint32_t reserved32 = r.read_u32("reserved");
  const auto mac = r.read_bytes(kMacBytes, "mac");
  std::copy(mac.begin(), mac.end(), h.mac.begin());
  r.expect_end("header");
  if (reserved8 != 0 || reserved32 != 0) {
    fail(fmt::format("reserved bytes are 0x{:02x} and 0x{:08x}, expected zero", reserved8,
                     reserved32));
  }

  check_header(h, limits, auth);
  return h;
}

void check_payload(const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
                   std::span<const std::byte> payload, const JobAuth& auth) {
  check_payload(header, header_bytes, {}, payload, auth);
}

namespace {

void check_length(const FrameHeader& header, uint64_t payload_bytes) {
  if (payload_bytes != header.payload_bytes) {
    fail(fmt::format("payload is {} bytes but the header says {}", payload_bytes,
                     header.payload_bytes));
  }
}

void check_crc(const FrameHeader& header, uint32_t crc) {
  if ((header.flags & kFlagCrc) != 0 && crc != header.payload_crc) {
    fail(
        fmt::format("payload CRC-32C 0x{:08x} does not match the header's 0x{:08x} "
                    "(corrupted in transit)",
                    crc, header.payload_crc));
  }
}

// The header bytes the MAC covers: its MAC field zeroed.
HeaderBytes mac_input(std::span<const std::byte, kHeaderBytes> header_bytes) {
  HeaderBytes zeroed;
  std::copy(header_bytes.begin(), header_bytes.end(), zeroed.begin());
  std::fill(zeroed.begin() + kOffMac, zeroed.end(), std::byte{0});
  return zeroed;
}

[[noreturn]] void fail_mac(const FrameHeader& header,
                           std::span<const std::byte, kHeaderBytes> header_bytes,
                           const JobAuth& auth) {
  fail(fmt::format("authentication failed for a frame from {}: {}",
                   header.sender == kCoordinator ? std::string("the coordinator")
                                                 : fmt::format("rank {}", header.sender),
                   auth.refusal(header_bytes.subspan<kOffMac, kMacBytes>())));
}

}  // namespace

void check_payload(const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
                   std::span<const std::byte> head, std::span<const std::byte> body,
                   const JobAuth& auth) {
  check_length(header, head.size() + body.size());
  if ((header.flags & kFlagCrc) != 0) {
    check_crc(header, crc32c_extend(crc32c(head.data(), head.size()), body.data(), body.size()));
  }
  if ((header.flags & kFlagMac) != 0 && !auth.verify(mac_input(header_bytes), head, body,
                                                     header_bytes.subspan<kOffMac, kMacBytes>())) {
    fail_mac(header, header_bytes, auth);
  }
}

std::optional<PayloadCheck> PayloadCheck::begin(
    const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
    const JobAuth& auth) {
  PayloadCheck check(header, header_bytes, auth);
  if ((header.flags & kFlagMac) != 0) {
    check.verifier_ =
        auth.begin_verify(mac_input(header_bytes), header_bytes.subspan<kOffMac, kMacBytes>());
    if (!check.verifier_) return std::nullopt;
  }
  return check;
}

void PayloadCheck::update(std::span<const std::byte> piece) {
  received_ += piece.size();
  if ((header_.flags & kFlagCrc) != 0) crc_ = crc32c_extend(crc_, piece.data(), piece.size());
  if (verifier_) verifier_->update(piece);
}

void PayloadCheck::finish() {
  check_length(header_, received_);
  check_crc(header_, crc_);
  if (verifier_ && !verifier_->finish()) fail_mac(header_, header_bytes_, *auth_);
}

FrameHeader decode_frame(std::span<const std::byte> frame, const FrameLimits& limits,
                         const JobAuth& auth) {
  if (frame.size() < kHeaderBytes) {
    fail(fmt::format("frame is {} bytes, shorter than the {}-byte header", frame.size(),
                     kHeaderBytes));
  }
  auto header_bytes = frame.first<kHeaderBytes>();
  FrameHeader header = decode_header(header_bytes, limits, auth);
  check_payload(header, header_bytes, frame.subspan(kHeaderBytes), auth);
  return header;
}

}  // namespace dtrain::comm::wire
