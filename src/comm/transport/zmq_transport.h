// ZmqTransport: comm::Transport over ZeroMQ between the processes of a job.
//
// Shape: each rank binds one PULL socket (on tcp, and on ipc when an ipc
// directory is configured) and connects one PUSH socket to every peer. Frames
// are two ZeroMQ parts, the 88-byte header of comm/wire/wire.h and the payload.
// Peers on the same host (equal host names in the rendezvous table) are
// reached over ipc, others over tcp; set prefer_ipc = false for loopback tcp.
//
// Threads: one I/O thread (std::jthread, stopped and joined by the
// destructor) reads every inbound frame, validates it (job id, ranks,
// length, CRC-32C, MAC, sequence) and queues payloads per (peer, tag); recv()
// waits on a condition variable until its message or its deadline. The same
// thread sends heartbeats every heartbeat_interval and watches every peer:
//  - a peer from which nothing (data or heartbeat) arrived for
//    heartbeat_timeout is failed: "peer stopped responding (no heartbeat for
//    5000 ms)"; so is the whole transport (every pending and later call
//    throws naming that peer, and the failure listener hears of it): a rank
//    waiting on a live neighbour of a stopped process learns within the
//    heartbeat timeout which rank is at fault, not at its own deadline;
//  - a peer whose connection closes (ZeroMQ socket monitor) without having
//    said goodbye is failed, with the whole transport, after a short grace
//    (2 heartbeat intervals) that lets an orderly goodbye still in flight
//    arrive;
//  - a peer that said goodbye (its transport was destroyed) is not failed,
//    but a recv() that needs one more message from it fails;
//  - a peer's abort frame (it gave up on the group, see abort()) fails this
//    whole transport, naming the culprit rank the frame carries.
// Frames from outside the job (another job id, a bad MAC, an unknown rank,
// a replayed sequence number) are dropped, counted (dropped_frames()) and
// logged rate-limited (the first 16, then every 1024th; the header checks
// and the drop log are those of comm/wire/framed_socket.h); they never
// reach recv(). A frame from a known rank that fails its CRC or skips
// sequence numbers fails that peer (it sent garbage or frames were lost).
//
// Failure semantics (transport.h): a call involving a failed peer throws
// CommError naming that peer, the caller's operation and the cause (messages
// already queued from it are still delivered first). Once any call has
// thrown CommError (TimeoutError included) the transport is failed: pending
// and later calls on every peer throw. No call blocks past its deadline,
// except that a zero-copy send whose deadline passes closes the socket to
// that peer and waits for ZeroMQ to release the buffer (milliseconds).
//
// Tcp lanes (comm/transport/tcp_lane.h): between two ranks that reach each
// other over tcp (not ipc), with no link shaper and no CURVE encryption,
// data frames go over one plain tcp connection per pair, the lane, instead
// of ZeroMQ: the sending call writes header and payload with one sendmsg
// (what the socket does not take at once is queued for the lanes' sender
// thread; send() never waits for the peer), and a receiving call reads
// frames from the lane itself, one caller per peer at a time, queueing
// those for other tags. The frames are the same (header, CRC or MAC) with a
// per-lane sequence number. Set-up never blocks connect(): connect() sends
// every peer an offer (its lane port, or 0) over ZeroMQ on the reserved tag
// kLaneOfferTag, and a set-up thread (std::jthread, stopped and joined
// first by the destructor) connects to the higher ranks that offered one
// and accepts the lower ones; the acceptor first writes a fresh random
// challenge (kLaneChallengeBytes), and the connector's first frame is a
// hello whose payload is that challenge, checked like any frame (job id,
// ranks, MAC), so a connection from outside the job is closed and a hello
// recorded from another connection (an earlier run with the same job name
// and secret) is refused. Once its lane to a peer is up, a rank sends a switch
// marker over ZeroMQ and its later data frames over the lane; the receiver
// reads the lane only after the marker, so the per-tag order holds across
// the switch. Until then, or when a peer never offers (or the connection
// fails), data stays on ZeroMQ. A lane that breaks mid-frame, carries a
// frame that fails its checks or skips a sequence number fails that peer at
// once; one that ends at a frame boundary waits for ZeroMQ's goodbye or
// disconnect to say which it was. ZeroMQ keeps heartbeats, goodbye, abort
// frames and the connection monitor, so failure detection and deadlines are
// as without lanes. Copies over a lane: none on the send side when the
// socket takes the frame at once (else send() and send_parts() copy the
// rest of their payload, send_owned() queues its buffer); the receiver reads each payload
// into a pooled buffer, which recv_visit() lends and recv() copies out,
// except that recv_into() and recv_parts() read the awaited frame's payload
// straight into their caller's buffers when that frame is the next on the
// lane (the call returns only when the frame's checks passed), and
// recv_fold() hands such a frame's body to its visitor piece by piece as it
// reads it, each piece MACed on the way, the MAC checked whole at the end
// (lane_fold; a failed check fails the peer and the call after the visitor
// has seen the forger's bytes). docs/wire-format.md, "Tcp lanes".
//
// Copies: payloads of at least zero_copy_min_bytes are handed to ZeroMQ
// without a copy (zmq_msg_init_data); send() then returns once ZeroMQ has
// written them to the kernel, because the caller's span must stay valid
// until then, while send_owned() returns at once (ZeroMQ frees the buffer
// it was given). Smaller payloads are copied once and both return at once.
// Inbound payloads stay in the ZeroMQ message until recv_into() copies them
// into the caller's buffer (recv() copies into the returned vector;
// recv_visit() lends the message itself to its visitor, no copy).
//
// Lifetime: construct (binds), take local_endpoint() to the rendezvous,
// connect() with the table, use, destroy. The destructor sends goodbye to
// every peer (or, when a peer's abort failed this transport, passes that
// abort on instead: a goodbye could overtake the original abort on its way
// to a third rank, which would then blame this rank), stops the I/O thread and closes the sockets,
// waiting at most `linger` for queued frames to leave. The Logger must outlive the transport.
// Thread safety: send()/recv() as in transport.h; connect() once, before any
// send() or recv().
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

#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/link_shaper.h"
#include "comm/transport/transport.h"
#include "comm/wire/auth.h"
#include "comm/wire/curve.h"
#include "comm/wire/rate_limited_log.h"
#include "comm/wire/wire.h"
#include "core/log.h"

namespace dtrain::comm {

struct ZmqTransportOptions {
  int rank = 0;
  int world_size = 1;
  // Interface the tcp endpoint binds ("0.0.0.0" for every interface).
  std::string listen_host = "127.0.0.1";
  // Host name or address peers use to reach this rank over tcp. Empty: the
  // listen host, or this machine's host name when listening on every interface.
  std::string advertise_host;
  // Directory for the ipc socket; empty disables ipc. A launched process
  // passes its LaunchSettings::socket_dir (DTRAIN_SOCKET_DIR, a private
  // folder its launcher removes, so that a killed process leaves no socket).
  std::string ipc_dir = "/tmp";
  // Use ipc for peers that report the same host name.
  bool prefer_ipc = true;
  std::chrono::milliseconds heartbeat_interval{200};
  // A peer silent this long is failed. Must exceed heartbeat_interval.
  std::chrono::milliseconds heartbeat_timeout{5000};
  // Largest payload accepted from the wire; larger frames are refused by
  // ZeroMQ before allocation, and send() of larger payloads is a UsageError.
  uint64_t max_message_bytes = uint64_t{1} << 30;
  // Carry a CRC-32C of every payload (cheap with SSE4.2; catches corruption
  // that tcp's 16-bit checksum misses). Not with a job secret: the MAC
  // covers the payload and catches the same corruption, so the CRC would
  // only cost a second pass over every byte on both sides.
  bool checksum = true;
  size_t zero_copy_min_bytes = 64 * 1024;
  // Data frames to peers reached over tcp go through tcp lanes (above).
  bool tcp_lanes = true;
  // How long a lane reader that finds no byte polls the socket without
  // sleeping (non-blocking peeks, yielding the core between them) before it
  // sleeps in poll(): a reply that comes within it costs no wake-up. Bounded
  // because the cores may be shared; zero: sleep at once.
  std::chrono::microseconds lane_spin{0};
  // SO_SNDBUF and SO_RCVBUF of every lane socket; 0 leaves them to the
  // kernel's autotuning (net.ipv4.tcp_wmem, tcp_rmem).
  int lane_socket_buffer_bytes = 0;
  // recv_fold() over a lane hands the body over piece by piece as it is
  // read (each piece MACed and used while in cache, the MAC checked whole
  // at the end); false: the whole frame is read and checked first, then
  // handed over in one piece (for comparing the two).
  bool lane_fold = true;
  // How long the lane set-up waits for one tcp connection to a peer.
  std::chrono::milliseconds lane_connect_timeout{60000};
  // How long the destructor lets queued frames drain.
  std::chrono::milliseconds linger{1000};
  // Emulated slow link (tests and benchmarks): every data frame this rank
  // sends, to any peer, passes one LinkShaper (bandwidth and latency of the
  // whole frame, header included). send() copies the payload and returns at
  // once; the shaper's thread queues the frame at its release time, in
  // order. Heartbeats and abort frames bypass it, so failure detection and
  // deadlines behave as without it; a frame the shaper cannot queue any
  // more (the peer failed meanwhile) fails the transport. The destructor
  // first lets the shaper deliver what it holds (unless the transport
  // failed), then says goodbye.
  std::optional<LinkShaperOptions> link;
};

// The transport tag of the lane offers connect() exchanges (and of a lane's
// hello); not for messages.
inline constexpr uint64_t kLaneOfferTag = ~uint64_t{0} - 0x4C;
// The random bytes an accepting rank writes first on a new lane connection,
// which the connector's hello must carry as its payload.
inline constexpr size_t kLaneChallengeBytes = 16;

class TcpLanes;

class ZmqTransport final : public Transport {
 public:
  // Binds the inbound socket(s). Throws CommError when binding fails,
  // UsageError for inconsistent options.
  ZmqTransport(ZmqTransportOptions options, JobAuth auth, Logger& logger);
  ~ZmqTransport() override;
  ZmqTransport(const ZmqTransport&) = delete;
  ZmqTransport& operator=(const ZmqTransport&) = delete;

  // What to register at the rendezvous.
  const PeerEndpoint& local_endpoint() const { return self_; }

  // Connects to every peer of `table` (indexed by rank, as rendezvous()
  // returns it) and starts the I/O thread. Throws UsageError when the table
  // does not match the world size or this rank's endpoint.
  void connect(const std::vector<PeerEndpoint>& table);

  // Keeps a coordinator alive as long as this transport (for the rank that
  // hosts it).
  void adopt_coordinator(std::unique_ptr<RendezvousServer> coordinator);

  int rank() const override { return options_.rank; }
  int size() const override { return options_.world_size; }
  void send(int peer, uint64_t tag, std::span<const std::byte> payload, const std::string& what,
            Deadline deadline) override;
  std::vector<std::byte> recv(int peer, uint64_t tag, const std::string& what,
                              Deadline deadline) override;
  void recv_into(int peer, uint64_t tag, std::span<std::byte> out, const std::string& what,
                 Deadline deadline) override;
  // Payloads of at least zero_copy_min_bytes go to ZeroMQ as they are (it
  // frees them); returns at once.
  void send_owned(int peer, uint64_t tag, OwnedBuffer payload, const std::string& what,
                  Deadline deadline) override;
  // Over a lane: one sendmsg from head and body, a copy only of what the
  // socket does not take at once; else joined for send_owned().
  void send_parts(int peer, uint64_t tag, std::span<const std::byte> head,
                  std::span<const std::byte> body, const std::string& what,
                  Deadline deadline) override;
  void recv_visit(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                  const MessageVisitor& use) override;
  // Over a lane, the awaited frame's payload goes straight into head and
  // body when it is the next frame there (zmq_transport.h, "Tcp lanes").
  void recv_parts(int peer, uint64_t tag, std::span<std::byte> head, std::span<std::byte> body,
                  const std::string& what, Deadline deadline,
                  const MessageVisitor& mismatch) override;
  // Over a lane, the awaited frame's body goes to `fold` in pieces as it
  // is read (read_lane_folded), its MAC checked as the pieces pass.
  void recv_fold(int peer, uint64_t tag, std::span<std::byte> head, size_t body_bytes,
                 const std::string& what, Deadline deadline, const PieceVisitor& fold,
                 const MessageVisitor& mismatch) override;
  // Sends an abort frame (docs/wire-format.md) to every peer not known dead.
  // A peer receiving one fails its transport naming `culprit`.
  void abort(int culprit, const std::string& reason) noexcept override;
  void set_failure_listener(FailureListener listener) override;
  bool link_shaped() const override { return shaper_ != nullptr; }

  // Waits until data to and from `peers` peers goes through tcp lanes
  // (both directions switched), or `deadline`; false then. For tests and
  // benchmarks that must measure or check the lanes, not ZeroMQ.
  bool wait_for_lanes(int peers, Deadline deadline);

  // Frames dropped because they did not belong to the job or failed
  // authentication.
  uint64_t dropped_frames() const { return drops_.count(); }
  // With security.encrypt: connections refused for a CURVE key not the
  // job's (comm/wire/curve.h); 0 otherwise.
  uint64_t refused_connections() const { return zap_ ? zap_->refused() : 0; }

 private:
  struct Peer;
  struct Failure {
    int peer = -1;
    std::string problem;
  };

  // recv_parts()'s buffers, which take() fills straight from a lane when
  // the next frame there is the awaited one and has their size (`filled`).
  struct ReceiveTarget {
    std::span<std::byte> head;
    std::span<std::byte> body;
    // recv_fold(): the body (fold_bytes of it) goes to *fold instead.
    const PieceVisitor* fold = nullptr;
    size_t fold_bytes = 0;
    bool filled = false;
    size_t bytes() const { return head.size() + (fold != nullptr ? fold_bytes : body.size()); }
  };
  // The next message from `peer` on `tag`; with `target`, an empty message
  // when its payload went straight into target's buffers (target->filled).
  zmq::message_t take(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                      ReceiveTarget* target = nullptr);
  bool with_crc() const { return options_.checksum && !auth_.enabled(); }
  // The encoded header of this rank's frame to `peer` (MAC or CRC as set),
  // for the payload head ‖ body (head may be empty).
  wire::HeaderBytes frame_header(int peer, wire::MessageType type, uint64_t sequence, uint64_t tag,
                                 std::span<const std::byte> payload) const {
    return frame_header(peer, type, sequence, tag, {}, payload);
  }
  wire::HeaderBytes frame_header(int peer, wire::MessageType type, uint64_t sequence, uint64_t tag,
                                 std::span<const std::byte> head,
                                 std::span<const std::byte> body) const;
  void check_peer_arg(int peer, const std::string& what) const;
  // check_peer_arg, the size limit, and that neither the transport nor
  // `peer` has failed (fail_call otherwise).
  void check_send(int peer, size_t bytes, const std::string& what);
  [[noreturn]] void fail_call(int peer, const std::string& what, const std::string& problem);
  void send_frame(Peer& peer, int peer_rank, wire::MessageType type, uint64_t tag,
                  std::span<const std::byte> payload, const std::string& what, Deadline deadline);
  // Queues header and `body` (the payload's ZeroMQ message) for `peer`
  // (never blocks); the problem when it could not.
  // Hands a data frame to the link shaper; its thread queues it later.
  void send_shaped(int peer_rank, uint64_t tag, std::span<const std::byte> payload);
  // send_owned() over ZeroMQ (the caller holds link.lane_gate).
  void send_owned_zmq(Peer& link, int peer, uint64_t tag, OwnedBuffer payload,
                      const std::string& what, Deadline deadline);
  std::optional<std::string> queue_frame(Peer& peer, int peer_rank, wire::MessageType type,
                                         uint64_t tag, std::span<const std::byte> payload,
                                         zmq::message_t& body);
  // Queues an abort frame (never blocks); the caller holds peer.send_mutex.
  bool send_abort_frame(Peer& peer, int peer_rank, int culprit, const std::string& reason);
  // Queues a frame of `type` whose payload ZeroMQ copies (never blocks);
  // false when the queue refused it. The caller holds peer.send_mutex.
  bool send_control_frame(Peer& peer, int peer_rank, wire::MessageType type,
                          std::span<const std::byte> payload, uint64_t tag = 0);

  // Tcp lanes (zmq_transport_lanes.cpp). start_lanes() (from connect())
  // listens, sends every peer its offer and starts lane_setup_, which runs
  // set_up_lanes(): it connects to the higher ranks that offered a lane,
  // accepts the lower ones, and switches each peer's sending to its lane.
  // `over_tcp[p]`: peer p is reached over tcp.
  void start_lanes(const std::vector<PeerEndpoint>& table, const std::vector<bool>& over_tcp);
  void set_up_lanes(const std::stop_token& stop, const std::vector<PeerEndpoint>& table);
  // Connects to `peer`'s lane listener at `port` and says hello; logs and
  // leaves the peer on ZeroMQ when it cannot.
  void connect_lane(int peer, const PeerEndpoint& endpoint, uint32_t port,
                    const std::stop_token& stop);
  // Takes the lane from accepted socket `fd` when its hello is a valid one
  // from a rank in `expected` (and removes it there); closes it otherwise.
  void accept_lane(int fd, std::vector<int>& expected);
  // Sends the switch marker over ZeroMQ, then routes data to `peer`
  // through its lane (zmq_transport.h, "Tcp lanes").
  void switch_to_lane(int peer);
  // The I/O thread's part: a data frame on kLaneOfferTag is an offer (4
  // bytes) or a switch marker (empty). The caller holds mutex_.
  void note_lane_frame(int sender, const zmq::message_t& payload);
  bool lane_open(int peer) const;  // the caller holds mutex_
  // The payload is head ‖ body (head may be empty); `owned` as TcpLane::send.
  void send_lane(int peer, uint64_t tag, std::span<const std::byte> head,
                 std::span<const std::byte> body, OwnedBuffer* owned, const std::string& what);
  // Reads one frame from `peer`'s lane into queues_, or returns after a
  // wait slice without one; fails the peer when the lane breaks. A frame on
  // `tag` of target's size goes into target's buffers instead (true then;
  // on a failed check the bytes there are the forger's, and the caller's
  // take() throws). The caller holds the reader's role (lane_reading_).
  bool read_lane(int peer, uint64_t tag, Deadline deadline, ReceiveTarget* target);
  // read_lane()'s part for a recv_fold() target once the frame's header `h`
  // (raw bytes `header`) passed: reads target.head, then the body in
  // pieces, each checked (wire::PayloadCheck) and handed to *target.fold as
  // soon as it is read; the whole check at the end. True when the frame
  // passed; false after failing the peer (or on kStopped).
  bool read_lane_folded(int peer, const wire::FrameHeader& h,
                        std::span<const std::byte, wire::kHeaderBytes> header,
                        const std::function<bool()>& keep_waiting, ReceiveTarget& target);
  // Queues a payload read from `peer`'s lane for take() (dropped when the
  // peer has failed meanwhile).
  void queue_lane_message(int peer, uint64_t tag, OwnedBuffer body);
  // The lane frame header's checks (wire-format.md, 1-5 and 7); fails the
  // peer and returns nullopt when one fails.
  std::optional<wire::FrameHeader> check_lane_header(
      int peer, std::span<const std::byte, wire::kHeaderBytes> header);
  void fail_lane(int peer, const std::string& problem);

  // I/O thread.
  void run_io(std::stop_token stop);
  void read_inbound();
  void handle_frame(zmq::message_t& header_part, zmq::message_t& payload_part);
  void read_monitor(int peer_rank);
  void send_heartbeats();
  void check_liveness();
  // How long until the first live peer's silence reaches the timeout.
  std::chrono::milliseconds until_silence_timeout();
  void fail_peer(int peer_rank, const std::string& problem);
  // Fails the whole transport naming `culprit` (later calls keep the first
  // failure) and tells the listener.
  void fail_transport(int culprit, const std::string& problem);
  // Tells the listener of failure_, once (call without mutex_ held). Called
  // before the waiters are woken (a waiter whose wait slice ends may still
  // see the failure first).
  void notify_listener();
  void drop(const std::string& why);

  ZmqTransportOptions options_;
  JobAuth auth_;
  Logger& logger_;
  wire::RateLimitedLog drops_;  // counted and logged as every receiver of frames does
  PeerEndpoint self_;
  std::string ipc_path_;  // the socket file this transport created; removed on destruction
  zmq::context_t context_;
  zmq::socket_t inbound_;
  std::shared_ptr<wire::ZapHandler> zap_;        // with auth_.curve(): closed before context_
  std::vector<std::unique_ptr<Peer>> peers_;     // indexed by rank; null for self
  std::vector<uint64_t> next_inbound_sequence_;  // I/O thread only
  bool connected_ = false;

  // Guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::pair<int, uint64_t>, std::deque<zmq::message_t>> queues_;
  std::vector<std::optional<std::string>> peer_failure_;
  std::vector<bool> said_goodbye_;
  std::vector<Deadline::Clock::time_point> last_heard_;
  std::vector<std::optional<Deadline::Clock::time_point>> disconnected_since_;
  std::optional<Failure> failure_;
  std::vector<bool> lane_reading_;                   // a caller reads the peer's lane
  std::vector<bool> lane_closed_;                    // the peer's lane ended at a frame boundary
  std::vector<std::optional<uint32_t>> lane_offer_;  // the peer's offer, once it came
  std::vector<bool> lane_marker_;                    // the peer sends over its lane from here on
  bool aborted_ = false;                             // abort() ran, or a peer's abort frame arrived
  bool abort_sent_ = false;                          // abort() ran (set with aborted_)

  std::mutex listener_mutex_;  // held while the listener runs or is replaced
  FailureListener listener_;
  bool listener_told_ = false;  // guarded by listener_mutex_

  std::unique_ptr<RendezvousServer> coordinator_;
  std::unique_ptr<LinkShaper> shaper_;  // when options_.link; stopped first by the destructor
  int wake_fd_ = -1;                    // eventfd: the destructor wakes the I/O thread's poll
  // Lanes by peer; set in connect(). next_lane_sequence_[p] belongs to
  // whoever holds the reader's role for p; lane_offered_ is written before
  // lane_setup_ starts.
  std::unique_ptr<TcpLanes> lanes_;
  std::vector<uint64_t> next_lane_sequence_;
  std::vector<bool> lane_offered_;
  std::jthread lane_setup_;  // stopped and joined first by the destructor
  std::jthread io_thread_;   // last: stopped and joined before the members above go
};

// The whole start-up of one rank: binds a ZmqTransport, registers at the
// coordinator `coordinator` ("host:port"), connects to the table. When
// `host_coordinator` is set (normally on rank 0) it first starts a
// RendezvousServer listening on the coordinator's port, owned by the
// returned transport. Throws what the constructor, rendezvous() and
// connect() throw.
std::unique_ptr<ZmqTransport> connect_zmq_transport(const ZmqTransportOptions& options,
                                                    const JobAuth& auth,
                                                    const std::string& coordinator,
                                                    bool host_coordinator, Deadline deadline,
                                                    Logger& logger);

}  // namespace dtrain::comm
