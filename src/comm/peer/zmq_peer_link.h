// ZmqPeerLink: the PeerLink contract (comm/peer/peer_link.h) over ZeroMQ
// between the processes of a decentralized job.
//
// Shape: each rank binds one ROUTER (inbound, every peer's frames) and
// connects one DEALER to every peer's ROUTER (outbound). Every frame to a peer
// leaves through that peer's DEALER, replies included, so each direction of
// each pair is one ordered ZeroMQ pipe. Frames are those of comm/wire/wire.h
// through FramedSocket: job id, CRC-32C, and the MAC when the job has a
// secret; a frame's `sequence` carries the sender's incarnation (a random
// 64-bit id per process unless the options give one). Types: peer hello, peer
// data, peer call, peer reply, heartbeat, goodbye (docs/wire-format.md).
//
// Threads: one I/O thread (std::jthread, started by connect(), stopped and
// joined by the destructor) owns every socket. Other threads hand it frames
// through a queue and an eventfd it polls. It validates inbound frames, queues
// posted messages per (peer, channel, step), runs the call handler and the
// listener, sends heartbeats every heartbeat_interval, and watches the peers:
//  - a peer is alive from connect(); one never heard from is lost after
//    join_timeout (processes start at different times);
//  - an alive peer silent (no frame of any kind) for heartbeat_timeout is
//    lost;
//  - a peer whose connection closes (socket monitor on its DEALER) without a
//    goodbye is lost after disconnect_grace, which lets a goodbye in flight
//    arrive;
//  - a goodbye makes the peer left;
//  - a hello with a new incarnation (a replacement process for the rank,
//    binding its predecessor's endpoint) makes the peer joined: what was
//    queued from the old process is dropped and calls waiting on it throw
//    PeerLostError; if the old one was still thought alive, the listener
//    first hears kLost ("replaced"). A lost peer's old process stays lost:
//    frames from it are dropped and counted. Frames this rank queued for a
//    peer before it found it lost may still reach its replacement (ZeroMQ
//    keeps them for the reconnection); a replacement adopts the incarnation
//    of every peer from the first frame it hears from it.
// Frames from outside the job (another job id, a bad MAC, garbage, an
// unknown rank) and stale frames of a replaced incarnation are dropped,
// counted (dropped_frames()) and logged rate-limited; they never reach
// receive() or the handler.
//
// Link shaping (tests and benchmarks, comm/transport/link_shaper.h): with
// options.link, every data frame (posts, calls, replies, goodbye) passes one
// LinkShaper for the whole rank; heartbeats and hellos bypass it, so failure
// detection behaves as without it. post() still returns at once.
//
// bytes_sent() counts every frame handed to ZeroMQ (88-byte header plus
// payload, heartbeats included); data frames are counted when queued.
//
// Lifetime: construct (binds; endpoint() is then known), connect() with every
// rank's endpoint (or give peer_endpoints in the options), use, destroy. The
// destructor says goodbye (leave()), lets the shaper deliver what it holds,
// stops the I/O thread after it sent what was queued (and gave the
// connections to alive peers that are down, e.g. to a replacement not yet
// reached, up to `linger` to come back), and closes the sockets, waiting at
// most `linger` for frames to leave. The Logger must outlive the
// link; so must what the handler and the listener capture (they may run
// until the destructor has joined the I/O thread). Thread safety: as in peer_link.h; connect()
// once, before any other call. Errors: the constructor throws CommError naming the endpoint when it
// cannot bind; UsageError for inconsistent options.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/peer/peer_link.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/link_shaper.h"
#include "comm/wire/auth.h"
#include "comm/wire/framed_socket.h"
#include "core/log.h"

namespace dtrain::comm {

struct ZmqPeerLinkOptions {
  int rank = 0;
  int world_size = 1;
  // Where this rank's ROUTER listens: "ipc://PATH" or "tcp://HOST:PORT"
  // (port 0: a free one; endpoint() tells which).
  std::string bind_endpoint = "tcp://127.0.0.1:0";
  // Every rank's endpoint, indexed by rank, when known up front; empty:
  // call connect() after discovery.
  std::vector<std::string> peer_endpoints;
  std::chrono::milliseconds heartbeat_interval{200};
  // An alive peer silent this long is lost. Must exceed heartbeat_interval.
  std::chrono::milliseconds heartbeat_timeout{10000};
  // A peer never heard from is not lost before this, counted from connect().
  std::chrono::milliseconds join_timeout{60000};
  // A peer whose connection closed without a goodbye is lost this long
  // after (0: two heartbeat intervals).
  std::chrono::milliseconds disconnect_grace{0};
  // Largest message or request/reply accepted, each way; larger inbound
  // frames are refused before allocation, larger posts are a UsageError.
  uint64_t max_message_bytes = uint64_t{1} << 30;
  // Emulated slow link for this rank's data frames (see the file comment).
  std::optional<LinkShaperOptions> link;
  // This process's incarnation (nonzero); 0: a random 64-bit id.
  uint64_t incarnation = 0;
  // How long the destructor lets queued frames leave.
  std::chrono::milliseconds linger{1000};
};

class ZmqPeerLink final : public PeerLink {
 public:
  ZmqPeerLink(ZmqPeerLinkOptions options, JobAuth auth, Logger& logger);
  ~ZmqPeerLink() override;
  ZmqPeerLink(const ZmqPeerLink&) = delete;
  ZmqPeerLink& operator=(const ZmqPeerLink&) = delete;

  // The bound endpoint (with the real port for tcp port 0).
  const std::string& endpoint() const { return endpoint_; }
  uint64_t incarnation() const { return incarnation_; }
  // Connects to every other rank's endpoint (indexed by rank) and starts the
  // I/O thread. Throws UsageError when the list does not match the world.
  void connect(const std::vector<std::string>& endpoints);
  // Keeps a rendezvous coordinator alive as long as the link (the rank that
  // hosts it).
  void adopt_coordinator(std::unique_ptr<RendezvousServer> coordinator);

  int rank() const override { return options_.rank; }
  int size() const override { return options_.world_size; }
  void post(int peer, uint32_t channel, uint64_t step, std::span<const std::byte> payload,
            const std::string& what, Deadline deadline) override;
  std::vector<std::byte> receive(int peer, uint32_t channel, uint64_t step, const std::string& what,
                                 Deadline deadline) override;
  std::optional<std::vector<std::byte>> try_receive(int peer, uint32_t channel,
                                                    uint64_t step) override;
  std::vector<std::byte> call(int peer, uint32_t service, std::span<const std::byte> request,
                              const std::string& what, Deadline deadline) override;
  void set_handler(Handler handler) override;
  void set_listener(Listener listener) override;
  bool alive(int peer) const override;
  uint64_t bytes_sent() const override;
  void leave() noexcept override;

  // Inbound frames dropped: from outside the job, failing a check, or from a
  // replaced or lost process.
  uint64_t dropped_frames() const;

  // Tests only: dies as a killed process would, without a goodbye: stops the
  // I/O thread, drops what is queued and closes the sockets at once. Later
  // calls throw CommError; peers see the connection close.
  void crash_for_test();

 private:
  enum class Status { kJoining, kAlive, kLost, kLeft };
  struct PeerState {
    Status status = Status::kJoining;
    uint64_t incarnation = 0;  // 0: never heard from
    // +1 at every loss, goodbye or join: a call remembers it to notice that
    // the process it called is gone.
    uint64_t epoch = 0;
    std::chrono::steady_clock::time_point last_heard;
    std::optional<std::chrono::steady_clock::time_point> disconnected_since;
    // The DEALER to it lost its connection and has not reconnected (only the
    // socket monitor's events change it, unlike disconnected_since).
    bool link_down = false;
    // Posted messages by channel, then step.
    std::map<uint32_t, std::multimap<uint64_t, std::vector<std::byte>>> inbox;
  };
  struct PendingCall {
    int peer = 0;
    uint64_t epoch = 0;
    bool done = false;
    std::vector<std::byte> reply;
    std::optional<std::string> error;  // the handler's failure
  };
  struct Outgoing {
    int peer = 0;
    wire::MessageType type = wire::MessageType::kPeerData;
    uint64_t tag = 0;
    std::vector<std::byte> payload;
  };
  struct Event {
    int peer;
    PeerEvent event;
    std::string reason;
  };

  void check_usable(int peer, const std::string& what) const;
  void check_alive_locked(int peer, const std::string& what) const;
  std::optional<std::vector<std::byte>> take_locked(int peer, uint32_t channel, uint64_t step);
  void check_drained_locked(int peer, uint32_t channel, uint64_t step,
                            const std::string& what) const;
  // Hands a frame to the I/O thread, through the shaper when there is one.
  void enqueue(Outgoing frame, bool shaped);
  void wake_io();

  // I/O thread.
  void run_io(std::stop_token stop);
  void send_now(Outgoing& frame);
  void flush_outbox();
  void handle_frame(wire::Frame& frame, std::vector<Event>& events);
  // handle_frame's first half: notes a new incarnation of `from` and its
  // liveness; false when the frame is to be dropped. Requires mutex_.
  bool admit_locked(int from, uint64_t incarnation, wire::MessageType type,
                    std::vector<Event>& events);
  // A call's reply (or its failure) handed to the waiting caller, if any.
  // Requires mutex_.
  void take_reply_locked(int from, uint64_t id, std::span<const std::byte> payload);
  void answer_call(int from, uint64_t id, std::span<const std::byte> payload);
  void read_monitor(int peer);
  void check_liveness(std::vector<Event>& events);
  // On shutdown: lets every alive peer's DEALER reconnect (a replacement
  // that joined late) so that what is queued for it leaves, at most `linger`.
  void await_reconnections();
  // Marks `peer` lost or left and wakes its waiters. Requires mutex_.
  void set_gone_locked(int peer, Status status, const std::string& reason,
                       std::vector<Event>& events);
  void fire(std::vector<Event>& events);
  std::chrono::milliseconds disconnect_grace() const;

  ZmqPeerLinkOptions options_;
  JobAuth auth_;
  Logger& logger_;
  uint64_t incarnation_ = 0;
  zmq::context_t context_;
  std::unique_ptr<wire::FramedSocket> router_;
  std::string endpoint_;
  // I/O thread only (after connect(); the destructor after joining it).
  std::vector<std::unique_ptr<wire::FramedSocket>> dealers_;  // by rank; none for self
  std::vector<zmq::socket_t> monitors_;                       // by rank
  int wake_fd_ = -1;                                          // eventfd
  std::chrono::steady_clock::time_point connected_at_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<PeerState> peers_;
  std::map<uint64_t, PendingCall> calls_;
  uint64_t next_call_id_ = 1;
  Handler handler_;
  Listener listener_;
  bool connected_ = false;
  bool left_ = false;
  bool crashed_ = false;

  std::mutex outbox_mutex_;
  std::deque<Outgoing> outbox_;

  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> stale_drops_{0};
  std::unique_ptr<LinkShaper> shaper_;
  std::unique_ptr<RendezvousServer> coordinator_;
  std::jthread io_;
};

}  // namespace dtrain::comm
