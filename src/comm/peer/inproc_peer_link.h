// InProcPeerLink: the PeerLink contract (comm/peer/peer_link.h) for N ranks
// that are threads of one process, sharing an in-memory hub (InProcPeerHub).
// It is how gossip strategies are tested with ranks as threads, as
// InProcTransport (comm/transport/inproc_transport.h) is for the collectives.
//
// Usage: build one InProcPeerHub for the world size, then one link per rank
// (hub.link(r)), and hand each to the thread playing that rank. Every rank is
// alive from the start (as if all had connected), so a message posted to a
// rank whose thread has not taken its link yet waits in its inbox.
//
// Test hooks, to emulate what a real job goes through:
//  - kill(r): rank r "dies" without a goodbye. Its own later calls throw
//    CommError; every other rank's listener hears (r, kLost); calls involving
//    r throw PeerLostError once nothing from r is queued or in flight.
//  - rejoin(r): a replacement process for rank r. The old link of r is dead
//    (its calls throw CommError), the new one starts with an empty inbox;
//    messages from and to the old incarnation that are still queued or in
//    flight are dropped; every other rank's listener hears (r, kJoined).
//  - set_delay(f): every message (post, call request and reply) from `from`
//    to `to` is delivered f(from, to) after it was sent, by the hub's delivery
//    thread; messages between one pair keep their order (a later message is
//    never delivered before an earlier one of the same pair). Without it,
//    messages are delivered at once.
// Call handlers and listeners run on the hub's service thread of the rank
// that owns them, never on a caller's thread, as on the real link.
// bytes_sent() counts payload bytes plus kNominalHeaderBytes per message
// (posts, requests, and the replies its handler sent).
//
// Ownership: the hub owns every queued message and its threads (one delivery
// thread, one service thread per rank), and joins them when destroyed. A link
// holds a reference to the hub, which must outlive it (the test keeps the hub
// on its stack for the ranks' whole life and destroys the links first).
// Thread safety: every member of both types may be called from any thread;
// the PeerLink rule about concurrent receive() on one (peer, channel)
// applies. set_delay() may be called at any time; the function is called on
// the sending thread, never under the hub's lock, and must be thread-safe.
// Blocking: receive() and call() wait until the message or reply arrives, the
// peer is lost or left, this rank is killed, or the deadline passes
// (TimeoutError naming the peer, the operation and what was awaited); post()
// never blocks (unbounded queues).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/peer/peer_link.h"

namespace dtrain::comm {

class InProcPeerLink;

class InProcPeerHub {
 public:
  // The header bytes bytes_sent() adds per message (the real link's frame
  // header, comm/wire/wire.h kHeaderBytes).
  static constexpr uint64_t kNominalHeaderBytes = 88;
  using Delay = std::function<std::chrono::microseconds(int from, int to)>;

  explicit InProcPeerHub(int world_size);
  InProcPeerHub(const InProcPeerHub&) = delete;
  InProcPeerHub& operator=(const InProcPeerHub&) = delete;
  ~InProcPeerHub();

  int size() const { return static_cast<int>(slots_.size()); }
  // The link of `rank`; each rank's first link may be taken once (later
  // ones come from rejoin()).
  std::unique_ptr<PeerLink> link(int rank);
  // Rank `rank` dies without a goodbye (see the file comment).
  void kill(int rank);
  // A fresh link for `rank`, a new incarnation (see the file comment).
  std::unique_ptr<PeerLink> rejoin(int rank);
  // Delays every later message; an empty function delivers at once.
  void set_delay(Delay delay);

 private:
  friend class InProcPeerLink;
  enum class Status { kAlive, kLost, kLeft };
  enum class Kind { kPost, kRequest, kReply };

  struct Message {
    Kind kind = Kind::kPost;
    int from = 0;
    int to = 0;
    uint64_t from_incarnation = 0;
    uint64_t to_incarnation = 0;
    uint32_t channel = 0;  // post: channel; request: service
    uint64_t number = 0;   // post: step; request, reply: call id
    std::vector<std::byte> payload;
    std::string error;  // reply: the handler's failure, empty if it succeeded
  };
  struct PendingCall {
    bool done = false;
    std::vector<std::byte> reply;
    std::string error;
  };
  // One rank: its current incarnation's state and its service thread.
  struct Slot {
    uint64_t incarnation = 1;
    Status status = Status::kAlive;
    bool taken = false;
    // Queued posts by (sender, channel), then by step.
    std::map<std::pair<int, uint32_t>, std::multimap<uint64_t, std::vector<std::byte>>> inbox;
    std::map<uint64_t, PendingCall> calls;  // this rank's calls in flight, by id
    PeerLink::Handler handler;
    PeerLink::Listener listener;
    uint64_t bytes_sent = 0;
    // Work for the service thread: handler and listener runs.
    std::deque<std::function<void()>> tasks;
    std::condition_variable_any task_ready;
    std::jthread service;
  };
  struct Scheduled {
    std::chrono::steady_clock::time_point at;
    uint64_t order = 0;  // ties: sending order
    Message message;
    bool operator>(const Scheduled& other) const {
      return at != other.at ? at > other.at : order > other.order;
    }
  };

  Slot& slot(int rank) { return *slots_[static_cast<size_t>(rank)]; }
  // Sends `message` now or through the delivery thread. `delay` was computed
  // by the caller outside the lock. Requires mutex_.
  void send_locked(Message message, std::chrono::microseconds delay);
  // Puts a message that has arrived where its receiver finds it. Requires mutex_.
  void arrive_locked(Message message);
  // Runs rank `to`'s handler for `request` (on `to`'s service thread).
  void serve(Message request);
  // Tells every alive rank but `peer` (taken or not) of `event`. Requires mutex_.
  void announce_locked(int peer, PeerEvent event, const std::string& reason);
  std::chrono::microseconds delay_for(int from, int to);
  void run_service(std::stop_token stop, int rank);
  void run_delivery(std::stop_token stop);
  std::unique_ptr<PeerLink> make_link(int rank, uint64_t incarnation);

  mutable std::mutex mutex_;
  // Every change a waiter may wait for: arrivals, status changes, replies.
  std::condition_variable_any changed_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex delay_mutex_;
  Delay delay_;
  // Delivery thread: scheduled messages, messages in flight per (from, to),
  // the last release time per (from, to).
  std::priority_queue<Scheduled, std::vector<Scheduled>, std::greater<>> scheduled_;
  std::condition_variable_any schedule_changed_;
  std::vector<std::vector<int>> in_flight_;
  std::vector<std::vector<std::chrono::steady_clock::time_point>> last_release_;
  uint64_t next_order_ = 0;
  uint64_t next_call_id_ = 1;
  std::jthread delivery_;
};

}  // namespace dtrain::comm
