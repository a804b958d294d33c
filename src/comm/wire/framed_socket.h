// FramedSocket: a ZeroMQ ROUTER or DEALER socket that carries dtrain frames.
// Every message is [routing id (ROUTER side only),] the 88-byte header of
// comm/wire/wire.h, the payload. It is the one framing layer of the
// rendezvous coordinators and their clients (comm/rendezvous/) and of the
// parameter server and its clients (ps/). ZmqTransport (PUSH/PULL, with
// sequence numbers and zero-copy sends of the caller's buffer) keeps its own
// sockets but shares what is the same: check_header(), receive_parts() and
// the drop log (RateLimitedLog).
//
// Sending fills in the sender (the socket's rank), the job id, the CRC-32C
// and, with a job secret, the MAC; the caller gives type, receiver, sequence
// and tag. It never blocks: ZeroMQ queues the message (a ROUTER drops a
// message for a connection that is gone, as that peer's death would). A
// payload handed over as a vector goes to ZeroMQ without a copy.
//
// Receiving validates each message before the caller sees it, in this order:
// the part count (3 on a ROUTER, 2 on a DEALER); the header (decode_header:
// magic, version, type, flags, reserved bytes, job id, sender range,
// receiver, and the payload size against the limit, before anything is
// allocated; ZeroMQ refuses longer parts already, ZMQ_MAXMSGSIZE); the type
// against the accepted ones; the payload's length, CRC-32C and MAC; with a
// job secret, that the MAC's nonce counter is above the last one accepted
// from the same nonce source on the same connection (a replayed or
// reordered frame is refused; the socket keeps one counter per connection
// and sending process it has heard, a few bytes each). A message
// that fails is dropped: counted (dropped()), logged rate-limited
// ("<name>: dropped an inbound frame (<n> so far): <why>", the first 16 then
// every 1024th), passed to the options' on_reject hook if there is one (a
// coordinator answers it with kReject) and never returned.
//
// With options.private_ipc the operating system protects the link instead
// of the frame MAC and the CRC (docs/security.md, "One host: what the
// private folder protects"): the endpoint is "ipc://PATH" in a folder that
// only this user may enter (owned by the effective uid, no permission bits
// for group or others), checked once by the constructor. Frames then carry
// neither MAC nor CRC, a frame that carries a MAC is refused, and every
// other check above stays (part count, header, job id, ranks, type, length).
// An "inproc://NAME" endpoint is private by nature (it never leaves the
// process: no socket file, no kernel copy) and passes that check as it is.
//
// With auth.curve() (security.encrypt), the socket speaks CURVE: a ROUTER as
// the server, a DEALER as the client, and a ROUTER refuses (and logs) any
// connection that does not hold the job's client key (comm/wire/curve.h),
// and a DEALER remembers why its handshakes failed (handshake_failures()).
//
// Ownership: owns its socket; the zmq::context_t and the Logger must outlive
// it. Thread safety: one thread at a time (a ZeroMQ socket is not
// thread-safe), except dropped(). Errors: the constructor throws CommError
// naming the endpoint when it cannot bind or connect, ConfigError naming the
// folder, its owner and mode when private_ipc's folder is not private (or
// the endpoint is not ipc, or CURVE is asked for as well); receiving throws only
// what on_reject throws. Blocking: send() (unless a link shaper is
// configured: then until the frame's release time) and try_receive() never block;
// receive() until a valid frame arrives or its deadline passes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "comm/transport/link_shaper.h"
#include "comm/wire/auth.h"
#include "comm/wire/curve.h"
#include "comm/wire/rate_limited_log.h"
#include "comm/wire/wire.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::comm::wire {

// A set of message types (the ones a receiver takes).
class MessageTypes {
 public:
  MessageTypes(std::initializer_list<MessageType> types);
  bool contains(MessageType type) const { return ((mask_ >> static_cast<uint8_t>(type)) & 1) != 0; }
  // "register", "data, heartbeat, goodbye or abort".
  std::string describe() const;

 private:
  uint32_t mask_ = 0;  // bit t: type t (every type is below 32)
};

// What every receiver of frames checks before it looks at the payload:
// decode_header(), then the type against `accepted`. Throws DataError.
FrameHeader check_header(std::span<const std::byte> header_bytes, const FrameLimits& limits,
                         const JobAuth& auth, const MessageTypes& accepted);

// Reads the parts of one message without blocking into `parts` and returns
// how many parts it had (0: no message waiting). Parts beyond parts.size()
// are read and discarded, so the next call starts at the next message.
size_t receive_parts(zmq::socket_t& socket, std::span<zmq::message_t> parts);

// The event id of a ZeroMQ socket-monitor message (its first part: u16
// event, u32 value, in the host's byte order as ZeroMQ defines it); nullopt
// for a part too short to be one.
std::optional<uint16_t> monitor_event(const zmq::message_t& first_part);

// Throws ConfigError unless the folder of `ipc_endpoint` ("ipc://PATH") is
// a directory (not a symlink) owned by this process's effective uid with no
// permission bits for group or others; `who` starts the message.
void check_private_ipc_folder(const std::string& ipc_endpoint, std::string_view who);
// Whether `endpoint` is "inproc://..." (within this process's context).
bool is_inproc(std::string_view endpoint);

// Waits until one of `items` is readable or `deadline` passes. Returns
// whether one is readable (revents are set as by zmq::poll).
bool poll_until(std::span<zmq::pollitem_t> items, Deadline deadline);

// A frame that passed every check.
struct Frame {
  std::string identity;  // ROUTER: the sending connection's routing id; empty on a DEALER
  FrameHeader header;
  zmq::message_t body;  // the payload as ZeroMQ received it (no copy)
  std::span<const std::byte> payload() const {
    return {static_cast<const std::byte*>(body.data()), body.size()};
  }
};

// A message that was dropped, as the on_reject hook sees it (the views are
// valid during the call only).
struct RejectedFrame {
  std::string_view identity;                // ROUTER: who sent it
  std::optional<FrameHeader> header;        // when the header itself passed
  std::span<const std::byte> header_bytes;  // as received (any length; empty if absent)
  std::span<const std::byte> payload;       // as received (empty if absent)
  std::string_view reason;                  // the DataError's message
  // The header's type byte, unverified (a reply from a coordinator with
  // another secret still says what it is); nullopt when the header part is
  // not kHeaderBytes long.
  std::optional<uint8_t> raw_type() const;
};

struct FramedSocketOptions {
  // Who receives, at the start of log lines: "rendezvous coordinator"; also
  // the operation of the constructor's CommError.
  std::string name;
  // CommError::peer() of the constructor's errors (-1: none).
  int peer = -1;
  // The sender field of every outgoing frame (kCoordinator for coordinators).
  uint32_t rank = 0;
  // What incoming frames must satisfy (job id, sender range, receiver, size).
  FrameLimits limits;
  // Incoming message types taken; others are dropped.
  MessageTypes accepted{MessageType::kData};
  // Carry a CRC-32C of every outgoing payload (ignored with private_ipc).
  bool crc = true;
  // The link is an ipc socket in a private folder: no MAC, no CRC (above).
  // Both ends of a link must agree; a job decides it for all its processes
  // (ps: strategy/ps_spec.cpp).
  bool private_ipc = false;
  // ROUTER only: a second endpoint bound beside the first, "inproc://NAME"
  // (a co-located ps server: its own worker's client connects there, the
  // others to the first endpoint; the context must be the client's). Empty:
  // none. Frames over both are signed and checked alike.
  std::string also_bind;
  // How long closing the socket waits for queued messages to leave.
  std::chrono::milliseconds linger{0};
  // No high-water mark on either queue (ZeroMQ's default holds 1000
  // messages, then a DEALER's send would have to wait).
  bool unbounded_queues = false;
  // Called for every dropped message after it was counted and logged. What
  // it throws propagates out of try_receive()/receive().
  std::function<void(const RejectedFrame&)> on_reject;
  // Emulated slow link (tests and benchmarks, comm/transport/link_shaper.h):
  // every frame this socket sends (routing id, header and payload counted)
  // waits for its release time in send(), which then blocks that long
  // (the socket has one thread, so the shaper cannot send for it later).
  std::optional<comm::LinkShaperOptions> link;
};

class FramedSocket {
 public:
  enum class Role { kRouter, kDealer };

  // A ROUTER binds `endpoint` ("tcp://HOST:PORT", port 0 or *: a free one;
  // "ipc://PATH"); a DEALER connects to it (lazily: the peer need not be up).
  FramedSocket(zmq::context_t& context, Role role, const std::string& endpoint,
               FramedSocketOptions options, const JobAuth& auth, Logger& logger);
  FramedSocket(const FramedSocket&) = delete;
  FramedSocket& operator=(const FramedSocket&) = delete;

  // A ROUTER's bound endpoint with the real port; a DEALER's peer.
  const std::string& endpoint() const { return endpoint_; }
  const FramedSocketOptions& options() const { return options_; }

  // Queues `payload` as a frame `header` (type, receiver, sequence, tag) to
  // the connection `identity` (ROUTER) or to the peer (DEALER: `identity`
  // empty). False when ZeroMQ refused it (a full queue: as if lost).
  bool send(std::string_view identity, const FrameHeader& header,
            std::span<const std::byte> payload);
  // The same, handing `payload` to ZeroMQ without a copy.
  bool send(std::string_view identity, const FrameHeader& header, std::vector<std::byte>&& payload);
  // The same, sharing `payload` with ZeroMQ without a copy: ZeroMQ holds a
  // reference until the frame is sent (or refused), so the caller may keep
  // it and send it again (ps::Client's pushes kept for a replaced server).
  bool send(std::string_view identity, const FrameHeader& header,
            std::shared_ptr<const std::vector<std::byte>> payload);

  // The next valid frame if one is waiting (at most 256 invalid ones are
  // dropped per call, so a flood cannot keep the caller here).
  std::optional<Frame> try_receive();
  // The next valid frame, waiting at most until `deadline`.
  std::optional<Frame> receive(Deadline deadline);

  // Counts and logs a frame the caller refuses after reading its payload
  // (a payload that does not decode), like the socket's own drops.
  void drop(std::string_view why) { drops_.add(why); }
  uint64_t dropped() const { return drops_.count(); }
  // With security.encrypt on a ROUTER: connections its context's ZAP
  // handler refused (a CURVE key not the job's); 0 otherwise.
  uint64_t refused_connections() const { return zap_ ? zap_->refused() : 0; }
  // With security.encrypt on a DEALER: why its CURVE handshakes failed so
  // far, for the message of a caller whose reply never came
  // (HandshakeWatch::failures()); "" otherwise.
  std::string handshake_failures() { return watch_ ? watch_->failures() : std::string(); }

  zmq::pollitem_t poll_item() { return {socket_.handle(), 0, ZMQ_POLLIN, 0}; }
  // For a socket monitor (zmq_socket_monitor) only.
  zmq::socket_t& socket() { return socket_; }

 private:
  HeaderBytes header_for(FrameHeader header, std::span<const std::byte> payload) const;
  bool send_parts(std::string_view identity, const HeaderBytes& head, zmq::message_t& body);
  // Throws DataError unless `header`'s nonce is new on this connection.
  void check_fresh(std::string_view identity, const FrameHeader& header);
  void reject(std::string_view identity, const std::optional<FrameHeader>& header,
              std::span<const std::byte> header_bytes, std::span<const std::byte> payload,
              const std::string& reason);

  FramedSocketOptions options_;
  Role role_;
  // The job's: its id, and CURVE's keys.
  JobAuth auth_;
  // What frames are signed and checked with: auth_, or with private_ipc a
  // JobAuth without a secret (no MAC; the job id comes from auth_).
  JobAuth frame_auth_;
  zmq::socket_t socket_;
  std::string endpoint_;
  RateLimitedLog drops_;
  // Routing id (empty on a DEALER) + nonce source (4 bytes) -> the counter
  // of the last frame accepted from it.
  std::unordered_map<std::string, uint64_t> last_nonce_;
  std::unique_ptr<LinkShaper> shaper_;     // when options_.link
  std::shared_ptr<ZapHandler> zap_;        // ROUTER with auth_.curve(): its context's handler
  std::unique_ptr<HandshakeWatch> watch_;  // DEALER with auth_.curve()
};

}  // namespace dtrain::comm::wire
