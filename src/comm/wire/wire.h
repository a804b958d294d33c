// The dtrain wire format: one fixed 88-byte frame header, then the payload.
// docs/wire-format.md describes it byte by byte; this file is its only
// encoder and decoder.
//
// Every frame names its job (job id), its sender and receiver rank, a
// per-(sender, receiver) sequence number, the message type and tag, and the
// payload length; optionally the payload's CRC-32C and, when the job has a
// secret, a MAC over header and payload (comm/wire/auth.h).
//
// The decoder is strict and treats its input as untrusted: anything it does
// not recognise (magic, version, type, flag bits, reserved bytes, job id,
// ranks out of range, a payload longer than the configured maximum, a payload
// whose length, CRC or MAC disagrees with the header) throws DataError whose
// message names the field and both values. It never allocates from a length
// it read: lengths are checked against FrameLimits first.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "comm/wire/auth.h"

namespace dtrain::comm::wire {

inline constexpr uint32_t kMagic = 0x4E525444;  // "DTRN" in little-endian byte order
// Version 2: the MAC field holds a nonce and an AES-256-GCM or Poly1305 tag
// (version 1: keyed BLAKE2b). Peers of different versions refuse each other.
inline constexpr uint8_t kVersion = 2;
inline constexpr size_t kHeaderBytes = 88;
// Sender of frames written by the rendezvous coordinator (which has no rank).
inline constexpr uint32_t kCoordinator = 0xFFFFFFFFu;

enum class MessageType : uint8_t {
  kData = 1,       // transport payload for (receiver, tag)
  kHeartbeat = 2,  // empty; proves the sender is alive
  kGoodbye = 3,    // empty; the sender closed its transport after its last message
  kAbort = 4,      // i32 culprit rank, then the reason (UTF-8): the sender gave up on the group
  // Peer link (comm/peer/zmq_peer_link.h); `sequence` carries the sender's
  // incarnation, heartbeat and goodbye are shared with the transport.
  kPeerHello = 5,  // empty; a new process for the sender's rank (its first frame to a peer)
  kPeerData = 6,   // tag = step; u32 channel, then the posted message
  kPeerCall = 7,   // tag = call id; u32 service, then the request
  kPeerReply = 8,  // tag = call id; u8 status (0 ok, 1 handler failed), then reply or reason
  kRegister = 16,  // rendezvous: rank -> coordinator, payload = endpoint record
  kTable = 17,     // rendezvous: coordinator -> rank, payload = all endpoint records
  kReject = 18,    // rendezvous: coordinator -> rank, payload = reason (UTF-8)
  kStatus = 19,    // rendezvous: coordinator -> rank, payload = registered-rank bitmap
};

std::string_view to_string(MessageType type);

// Header flag bits; any other bit set is an error.
inline constexpr uint8_t kFlagCrc = 0x01;  // payload_crc holds CRC-32C of the payload
// mac holds JobAuth::mac(header with mac zeroed, payload): nonce and tag.
inline constexpr uint8_t kFlagMac = 0x02;

struct FrameHeader {
  MessageType type = MessageType::kData;
  uint8_t flags = 0;
  uint32_t sender = 0;
  uint32_t receiver = 0;
  uint64_t job_id = 0;
  uint64_t sequence = 0;
  uint64_t tag = 0;
  uint64_t payload_bytes = 0;
  uint32_t payload_crc = 0;
  Mac mac{};
};

using HeaderBytes = std::array<std::byte, kHeaderBytes>;

// Builds the header bytes for `payload`: fills payload_bytes, the CRC when
// `with_crc`, and the MAC when `auth` is enabled. `header`'s own flags,
// payload_bytes, payload_crc and mac are ignored.
HeaderBytes encode_header(const FrameHeader& header, std::span<const std::byte> payload,
                          const JobAuth& auth, bool with_crc);
// The same for the payload head ‖ body, which the caller sends without
// joining them (a tcp lane's gathered write).
HeaderBytes encode_header(const FrameHeader& header, std::span<const std::byte> head,
                          std::span<const std::byte> body, const JobAuth& auth, bool with_crc);

// What the receiver expects of a frame.
struct FrameLimits {
  uint64_t job_id = 0;
  // Ranks are in [0, world_size); kCoordinator is accepted as a sender only
  // for the coordinator's message types.
  uint32_t world_size = 1;
  // The receiver's own rank, or kCoordinator for the coordinator; frames
  // addressed elsewhere are rejected. kAnyReceiver disables the check.
  uint32_t receiver = 0;
  // Largest payload accepted; larger frames are rejected before any allocation.
  uint64_t max_payload_bytes = uint64_t{1} << 30;
};
inline constexpr uint32_t kAnyReceiver = 0xFFFFFFFEu;

// Parses and validates header bytes. Throws DataError naming the bad field.
// The MAC and CRC are checked later by check_payload.
FrameHeader decode_header(std::span<const std::byte> bytes, const FrameLimits& limits,
                          const JobAuth& auth);

// Checks that `payload` is the one `header` describes: length, CRC-32C, MAC
// (`header_bytes` are the raw header bytes the MAC covers). Throws DataError.
void check_payload(const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
                   std::span<const std::byte> payload, const JobAuth& auth);
// The same for the payload head ‖ body, without joining them (a receiver
// that read the payload into two buffers).
void check_payload(const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
                   std::span<const std::byte> head, std::span<const std::byte> body,
                   const JobAuth& auth);

// check_payload() over a payload that arrives in pieces (a receiver that
// uses each piece as it comes and fails the whole operation on a bad frame):
// update() each piece in order, then finish(), which throws check_payload()'s
// DataError for the same frames. The JobAuth outlives it.
class PayloadCheck {
 public:
  // nullopt when the frame's MAC cannot be checked piece by piece on this
  // CPU (JobAuth::begin_verify); the caller then uses check_payload().
  static std::optional<PayloadCheck> begin(const FrameHeader& header,
                                           std::span<const std::byte, kHeaderBytes> header_bytes,
                                           const JobAuth& auth);
  void update(std::span<const std::byte> piece);
  void finish();

 private:
  PayloadCheck(const FrameHeader& header, std::span<const std::byte, kHeaderBytes> header_bytes,
               const JobAuth& auth)
      : header_(header), auth_(&auth) {
    std::copy(header_bytes.begin(), header_bytes.end(), header_bytes_.begin());
  }
  FrameHeader header_;
  HeaderBytes header_bytes_{};
  const JobAuth* auth_;
  std::optional<JobAuth::PayloadVerifier> verifier_;
  uint64_t received_ = 0;
  uint32_t crc_ = 0;
};

// A whole frame in one buffer (header then payload): decode_header +
// check_payload. Returns the header; the payload is frame[kHeaderBytes:].
FrameHeader decode_frame(std::span<const std::byte> frame, const FrameLimits& limits,
                         const JobAuth& auth);

}  // namespace dtrain::comm::wire
