// Transport: ordered, reliable point-to-point messages between the ranks of
// one job. The layer below the collectives (comm/collectives/communicator.h); it knows
// bytes, not tensors.
//
// Contract:
// - Messages between a (sender, receiver, tag) triple arrive in the order sent,
//   whole (no partial messages); different tags are independent channels.
// - send() may return before the peer received the message (it is buffered or
//   queued), but it never silently drops one: delivery failures surface as a
//   CommError from a later call to this transport.
// - recv() blocks until a message from `peer` with `tag` arrives, or throws
//   TimeoutError (naming the peer, the operation and the tag) when `deadline`
//   passes, or CommError when the peer is known dead or sent garbage.
// - After any CommError the transport is failed: every later call throws.
//   Its owner builds a new one (elastic re-formation).
// - abort() gives up on the whole group at once: it fails this transport and
//   tells every reachable peer, whose transports fail with the same culprit
//   and reason. The collectives call it on their first CommError, so a rank
//   waiting on a live neighbour learns which rank broke the group at once
//   instead of timing out naming that neighbour.
// Ownership: the transport owns its sockets and threads; destroying it closes
// them without blocking for more than a short linger.
// Thread safety: send() and recv() may be called from several threads at
// once as long as two threads never recv() on the same (peer, tag) together.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "comm/transport/owned_buffer.h"
#include "core/deadline.h"

namespace dtrain::comm {

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // `what` names the operation for errors ("allreduce", "broadcast").
  virtual void send(int peer, uint64_t tag, std::span<const std::byte> payload,
                    const std::string& what, Deadline deadline) = 0;
  // Returns the whole message.
  virtual std::vector<std::byte> recv(int peer, uint64_t tag, const std::string& what,
                                      Deadline deadline) = 0;
  // Receives into `out`, which must have exactly the message's size
  // (CommError naming both sizes otherwise). Lets the collectives avoid a copy.
  virtual void recv_into(int peer, uint64_t tag, std::span<std::byte> out, const std::string& what,
                         Deadline deadline) = 0;

  // send() of a buffer the transport takes over: same ordering and failure
  // contract, but it never waits for the peer or for the bytes to leave (the
  // transport frees the buffer once they have). The default copies through
  // send().
  virtual void send_owned(int peer, uint64_t tag, OwnedBuffer payload, const std::string& what,
                          Deadline deadline) {
    send(peer, tag, payload.bytes(), what, deadline);
  }
  // send_owned() of the message head ‖ body, without the caller joining
  // them: a transport that writes both straight to the network (a tcp lane)
  // copies only what the socket does not take at once. The default joins
  // them into one buffer for send_owned().
  virtual void send_parts(int peer, uint64_t tag, std::span<const std::byte> head,
                          std::span<const std::byte> body, const std::string& what,
                          Deadline deadline) {
    send_owned(peer, tag, OwnedBuffer::join(head, body), what, deadline);
  }
  // recv(), but hands the message to `use` in place (the span is valid only
  // during the call) instead of copying it out: the collectives reduce
  // straight from the received message. Whatever `use` throws propagates
  // (the message is consumed either way). The default goes through recv().
  using MessageVisitor = std::function<void(std::span<const std::byte>)>;
  virtual void recv_visit(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                          const MessageVisitor& use) {
    use(recv(peer, tag, what, deadline));
  }
  // The receiving side of send_parts(): a message of head.size() +
  // body.size() bytes lands in head (its first bytes) and body (the rest),
  // so that a transport that reads from the network (a tcp lane) writes the
  // payload straight to where the caller wants it. A message of another
  // size goes to `mismatch` instead (in place, as recv_visit()), which
  // throws the caller's error. On any throw head and body hold unspecified
  // bytes. The default goes through recv_visit() and copies.
  virtual void recv_parts(int peer, uint64_t tag, std::span<std::byte> head,
                          std::span<std::byte> body, const std::string& what, Deadline deadline,
                          const MessageVisitor& mismatch) {
    recv_visit(peer, tag, what, deadline, [&](std::span<const std::byte> message) {
      copy_parts(message, head, body, mismatch);
    });
  }
  // recv_parts() for a receiver that consumes the body as it arrives: a
  // message of head.size() + body_bytes bytes lands in head, then its body
  // goes to `fold` in order, fold(offset, piece), pieces of whole 16-byte
  // blocks but the last. A transport that reads from the network (a tcp
  // lane) hands each piece over as soon as it has read it, before the
  // frame's MAC is checked over the whole message: `fold` sees unverified
  // bytes, and when the check fails afterwards the call throws CommError
  // naming the peer, so the caller must treat whatever `fold` wrote as
  // garbage then (the collectives fail the operation). A message of another
  // size goes to `mismatch`, as in recv_parts(). The default goes through
  // recv_visit() (checked first) and hands the body over in one piece.
  using PieceVisitor = std::function<void(size_t offset, std::span<const std::byte> piece)>;
  virtual void recv_fold(int peer, uint64_t tag, std::span<std::byte> head, size_t body_bytes,
                         const std::string& what, Deadline deadline, const PieceVisitor& fold,
                         const MessageVisitor& mismatch) {
    recv_visit(peer, tag, what, deadline, [&](std::span<const std::byte> message) {
      fold_parts(message, head, body_bytes, fold, mismatch);
    });
  }
  // recv_fold()'s hand-out of a received (checked) `message`.
  static void fold_parts(std::span<const std::byte> message, std::span<std::byte> head,
                         size_t body_bytes, const PieceVisitor& fold,
                         const MessageVisitor& mismatch) {
    if (message.size() != head.size() + body_bytes) {
      mismatch(message);
      return;
    }
    std::copy(message.begin(), message.begin() + static_cast<std::ptrdiff_t>(head.size()),
              head.begin());
    if (body_bytes > 0) fold(0, message.subspan(head.size()));
  }
  // recv_parts()'s hand-out of a received `message`.
  static void copy_parts(std::span<const std::byte> message, std::span<std::byte> head,
                         std::span<std::byte> body, const MessageVisitor& mismatch) {
    if (message.size() != head.size() + body.size()) {
      mismatch(message);
      return;
    }
    std::copy(message.begin(), message.begin() + static_cast<std::ptrdiff_t>(head.size()),
              head.begin());
    std::copy(message.begin() + static_cast<std::ptrdiff_t>(head.size()), message.end(),
              body.begin());
  }
  // Fails this transport: every pending and later call throws CommError
  // naming `culprit` (the rank at fault, -1 when unknown) and `reason`; then
  // notifies every peer not known dead, once. A transport failed by a peer's
  // notice does not pass it on. Best effort: never throws, never blocks on a
  // peer.
  virtual void abort(int culprit, const std::string& reason) noexcept = 0;

  // Called once, on whatever thread notices it, when this transport becomes
  // failed (a peer declared dead or silent, an abort frame, abort() or a
  // call's deadline), with the culprit rank (-1 unknown) and the reason: the
  // owner of other waits on the same peers (the shared-memory allreduce)
  // fails them too. The listener must not call back into the transport and
  // must outlive it, or be replaced by an empty one first; setting it is
  // thread-safe. A transport that never fails as a whole may ignore it.
  using FailureListener = std::function<void(int culprit, const std::string& reason)>;
  virtual void set_failure_listener(FailureListener listener) { (void)listener; }

  // Whether this transport's messages go through an emulated slow link
  // (comm/transport/link_shaper.h). The communicator then keeps every
  // collective on the transport (no shared memory), so that nothing
  // escapes the limiter.
  virtual bool link_shaped() const { return false; }
};

}  // namespace dtrain::comm
