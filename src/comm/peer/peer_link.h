// PeerLink: messages between the workers of a decentralized job (gossip),
// where any worker may die and the others go on. It differs from Transport
// (comm/transport/transport.h) in one rule: a peer's death fails only what
// involves that peer, never the whole link. The collectives need a group
// that fails as one; gossip needs neighbours that can be dropped.
//
// Two kinds of exchange:
//  - post()/receive(): one-way messages on (channel, step). Synchronous
//    gossip (D-PSGD) posts its model to each out-neighbour and receives each
//    in-neighbour's of the same step.
//  - call(): request/reply, answered by the peer's handler on the peer's link
//    thread, whatever the peer's training thread is doing. Asynchronous
//    gossip (AD-PSGD), the chief's model gathering and a replacement's
//    model copy use it.
//
// Peer states: alive (from connect or a hello), lost (silent for the
// heartbeat timeout, or its connection closed without a goodbye), left (said
// goodbye: it finished). A lost or left peer comes back when a new process
// for its rank says hello (a replacement); the listener hears of every
// change. A call involving a peer that is lost or left throws PeerLostError
// at once (queued messages from it are still delivered first); one that
// outlives its deadline throws TimeoutError naming the peer, the operation
// and what it waited for. Neither fails the link: other peers are untouched.
//
// Ownership: a link owns its sockets and threads; destroying it says goodbye
// (leave()) and joins its threads, waiting at most a short linger.
// Thread safety: every method may be called from any thread, with one rule:
// two threads never receive() on the same (peer, channel) at once. The
// handler and the listener run on the link's thread: they must not block
// on any peer (the deadlock-freedom argument of AD-PSGD rests on it,
// docs/gossip.md), and must not call back into the link except post().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"

namespace dtrain::comm {

// A peer is lost or left (it is PeerLostError::peer()).
class PeerLostError : public CommError {
 public:
  PeerLostError(int peer, std::string operation, const std::string& problem)
      : CommError(peer, std::move(operation), problem) {}
};

enum class PeerEvent { kLost, kLeft, kJoined };

class PeerLink {
 public:
  virtual ~PeerLink() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Queues `payload` for `peer` on (channel, step) and returns; never blocks
  // past `deadline` (an emulated slow link may hold it until then). Throws
  // PeerLostError when the peer is known lost or left. `what` names the
  // operation in errors ("gossip step 41").
  virtual void post(int peer, uint32_t channel, uint64_t step, std::span<const std::byte> payload,
                    const std::string& what, Deadline deadline) = 0;
  // The message `peer` posted on (channel, step). Queued messages from that
  // peer on that channel with an earlier step are discarded; later ones are
  // kept for later receives.
  virtual std::vector<std::byte> receive(int peer, uint32_t channel, uint64_t step,
                                         const std::string& what, Deadline deadline) = 0;
  // The message on (channel, step) from `peer` if it has arrived (earlier
  // steps discarded as by receive()), else nullopt at once. Throws
  // PeerLostError like receive() once nothing from the peer is queued.
  virtual std::optional<std::vector<std::byte>> try_receive(int peer, uint32_t channel,
                                                            uint64_t step) = 0;
  // Runs `peer`'s handler on `request` for `service` and returns its reply.
  // A handler that throws makes call() throw CommError naming the peer and
  // the handler's message (the peer stays alive). Several threads may call()
  // at once, to the same peer too.
  virtual std::vector<std::byte> call(int peer, uint32_t service,
                                      std::span<const std::byte> request, const std::string& what,
                                      Deadline deadline) = 0;

  // Answers calls: (caller's rank, service, request) -> reply. Set it before
  // peers may call (right after construction); calls that arrive with no
  // handler set are refused (the caller gets CommError).
  using Handler = std::function<std::vector<std::byte>(int from, uint32_t service,
                                                       std::span<const std::byte> request)>;
  virtual void set_handler(Handler handler) = 0;
  // Hears of every peer state change: (peer, event, reason in words).
  using Listener = std::function<void(int peer, PeerEvent event, const std::string& reason)>;
  virtual void set_listener(Listener listener) = 0;

  // Whether `peer` is alive (neither lost nor left).
  virtual bool alive(int peer) const = 0;
  // Bytes this link handed to the network (frames, headers included).
  virtual uint64_t bytes_sent() const = 0;
  // Tells every peer this worker is done (they see kLeft) and stops
  // answering calls. Idempotent; the destructor calls it. Never throws.
  virtual void leave() noexcept = 0;
};

}  // namespace dtrain::comm
