// TcpLane and TcpLanes: plain tcp connections that carry ZmqTransport's data
// frames between two ranks that reach each other over tcp (zmq_transport.h,
// "Tcp lanes"). Internal to comm/transport.
//
// Why: a frame through ZeroMQ passes two ZeroMQ I/O threads and the
// transport's own I/O thread before the receiving call sees it; on this
// project's loopback measurements a 4 KiB ping-pong took 88 us through
// ZeroMQ and 5 us over a plain socket (docs/collectives.md). A lane is one
// socket per peer pair: the sending call writes header and payload with one
// sendmsg, the receiving call reads them itself. ZeroMQ keeps the control
// frames (heartbeats, goodbye, abort) and the connection monitor.
//
// A frame on a lane is the 88-byte header of comm/wire/wire.h followed by its
// payload, exactly as on ZeroMQ; the first frame on a new connection is the
// connector's hello (docs/wire-format.md).
//
// Sending never waits for the peer: TcpLane::send writes what the socket
// takes now and queues the rest, which TcpLanes' sender thread (a
// std::jthread, stopped and joined by the destructor) writes when the socket
// drains. Receiving is the caller's: read_exact() waits in slices and asks
// its caller between slices whether to go on, so a deadline or a failure
// elsewhere stops it.
//
// Ownership: a TcpLane owns its socket; TcpLanes owns its lanes, its
// listening socket and its thread. Thread safety: send(), flush() and
// pending() of one lane may run on any threads (one mutex per lane); one
// reader at a time per lane (the transport's reader flag ensures it).
// Nothing here throws but CommError from listen() and connect_to() and
// std::bad_alloc.
#pragma once

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/transport/owned_buffer.h"
#include "comm/wire/wire.h"
#include "core/deadline.h"

namespace dtrain::comm {

class TcpLane {
 public:
  // Takes over `fd`, a connected tcp socket (made non-blocking here; its
  // send and receive buffers set to `socket_buffer_bytes` when not zero).
  TcpLane(int fd, int peer, int socket_buffer_bytes = 0);
  ~TcpLane();
  TcpLane(const TcpLane&) = delete;
  TcpLane& operator=(const TcpLane&) = delete;

  int peer() const { return peer_; }
  int fd() const { return fd_; }

  // Builds the header of the next frame from the lane's sequence number
  // (counted from 1; the hello is 0).
  using HeaderMaker = std::function<wire::HeaderBytes(uint64_t sequence)>;
  struct SendResult {
    std::optional<std::string> problem;  // the connection failed
    bool queued = false;                 // bytes wait for the sender thread
  };
  // Writes header and the payload head ‖ body with one sendmsg, or queues
  // what the socket does not take now: `owned` itself when given (head is
  // empty and body is its bytes), else a copy of the rest of head ‖ body.
  SendResult send(const HeaderMaker& make_header, std::span<const std::byte> head,
                  std::span<const std::byte> body, OwnedBuffer* owned);
  // Writes queued bytes until the socket would block; the problem when the
  // connection failed.
  std::optional<std::string> flush();
  bool pending();

  enum class ReadStatus { kDone, kStopped, kClosed, kFailed };
  // Reads exactly out.size() bytes. Whenever no byte is there it calls
  // `wait`, which waits a while (a slice) for the socket to become readable
  // and returns false to stop the read (kStopped). *got counts the bytes
  // read; kClosed: the peer closed the connection; kFailed: *problem says
  // why.
  using Wait = std::function<bool()>;
  ReadStatus read_exact(std::span<std::byte> out, const Wait& wait, size_t* got,
                        std::string* problem);
  // What a read that ended with `status` after `got` of a frame's
  // `expected` payload bytes fails the peer with (`problem` for kFailed, a
  // mid-frame close for kClosed); nullopt for kStopped (the caller's
  // deadline or a failure elsewhere: nothing to fail).
  static std::optional<std::string> read_problem(ReadStatus status, const std::string& problem,
                                                 size_t got, uint64_t expected);
  // The same, but returns once it has read at least one byte (*got of them,
  // up to out.size()): a caller that uses bytes as they come.
  ReadStatus read_some(std::span<std::byte> out, const Wait& wait, size_t* got,
                       std::string* problem);
  // Waits at most `wait` for a byte to read (or the connection's end);
  // false when none came.
  bool readable(std::chrono::milliseconds wait) const;
  // The same without sleeping: peeks for up to `budget`, yielding the core
  // between peeks. False when nothing came (or `budget` is zero).
  bool spin_readable(std::chrono::microseconds budget) const;

  // Sends FIN after what is queued has been written, and discards what the
  // peer sent that nobody will read (so that closing sends no reset).
  void finish();

 private:
  struct Queued {
    wire::HeaderBytes header;
    OwnedBuffer payload{{nullptr, OwnedBuffer::Release{0}}, 0};
    size_t offset = 0;  // bytes of header, then payload, already written
  };
  // Writes `q` from its offset; false on error (problem_ set).
  bool write_queued(Queued& q);

  int fd_;
  int peer_;
  std::mutex mutex_;
  uint64_t next_sequence_ = 1;          // guarded by mutex_
  std::deque<Queued> queue_;            // guarded by mutex_
  std::optional<std::string> problem_;  // guarded by mutex_
};

class TcpLanes {
 public:
  // Called from the sender thread when a queued write fails.
  using FailureHandler = std::function<void(int peer, const std::string& problem)>;
  // `socket_buffer_bytes`: SO_SNDBUF and SO_RCVBUF of every lane (0: the
  // kernel's autotuning).
  TcpLanes(int world_size, int socket_buffer_bytes, FailureHandler on_failure);
  // Stops the sender thread, then closes every lane and the listener.
  ~TcpLanes();
  TcpLanes(const TcpLanes&) = delete;
  TcpLanes& operator=(const TcpLanes&) = delete;

  // Binds a listening socket on `host` ("0.0.0.0", "*" or empty: every
  // interface) at a free port and returns the port. Throws CommError.
  int listen(const std::string& host);
  // One connection from the listener, or -1 when none came before `deadline`.
  int accept_one(Deadline deadline);
  // A connected socket to host:port (TCP_NODELAY). Throws CommError naming
  // `peer` when it cannot connect before `deadline` or `stop` is requested.
  static int connect_to(int peer, const std::string& host, int port, Deadline deadline,
                        const std::stop_token& stop);
  // Closes the listener (after the last accept).
  void stop_listening();

  // Adds the lane to `peer` (once per peer; any thread).
  void add(int peer, int fd);
  TcpLane* lane(int peer) const {
    return peer >= 0 && static_cast<size_t>(peer) < world_size_
               ? lanes_[static_cast<size_t>(peer)].load(std::memory_order_acquire)
               : nullptr;
  }
  // Starts the sender thread.
  void start();
  // TcpLane::send, waking the sender thread when bytes were queued.
  std::optional<std::string> send(int peer, const TcpLane::HeaderMaker& make_header,
                                  std::span<const std::byte> head, std::span<const std::byte> body,
                                  OwnedBuffer* owned);
  // Waits at most `wait` for `peer`'s lane to become readable and, while it
  // waits, writes what is queued on any lane as its socket drains (so that a
  // receiving caller moves its own sends along, without a hand-off to the
  // sender thread). True when the lane is readable.
  bool wait_readable(int peer, std::chrono::milliseconds wait);
  // Waits until nothing is queued on any lane, or `deadline`; then calls
  // finish() on every lane. For the transport's destructor.
  void drain_and_finish(Deadline deadline);

 private:
  void run_sender(std::stop_token stop);
  // Polls `first` beside every lane with queued bytes (for POLLOUT) for up to
  // `wait`, flushes the lanes that became writable (a failure goes to the
  // failure handler) and returns first's revents (0 when poll timed out).
  short poll_with_writers(pollfd first, std::chrono::milliseconds wait);
  void wake();

  size_t world_size_;
  int socket_buffer_bytes_;
  // By rank: set once by add(), owned by owned_ (guarded by owned_mutex_).
  std::unique_ptr<std::atomic<TcpLane*>[]> lanes_;
  std::mutex owned_mutex_;
  std::vector<std::unique_ptr<TcpLane>> owned_;
  FailureHandler on_failure_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::jthread sender_;  // last: stopped and joined before the members above go
};

}  // namespace dtrain::comm
