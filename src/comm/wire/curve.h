// CURVE on dtrain's sockets (security.encrypt, docs/security.md): libzmq's
// CurveZMQ (RFC 26: a Curve25519 handshake, then every message boxed with
// XSalsa20-Poly1305 under per-connection keys, libsodium underneath) with the
// key pairs of JobAuth::curve().
//
// - secure_binding_socket() makes a socket a CURVE server (the job's server
//   pair) before it binds, and returns the ZAP handler of its context, which
//   the caller keeps for the socket's life.
// - secure_connecting_socket() makes a socket a CURVE client (the job's
//   client pair, and the server's public key) before it connects.
// - ZapHandler answers libzmq's authentication requests (ZAP, RFC 27) on
//   "inproc://zeromq.zap.01" of one context: it accepts a CURVE client whose
//   long-term public key is the job's client key and refuses any other, each
//   refusal counted and logged rate-limited ("<name>: refused a CURVE
//   connection (<n> so far): from 127.0.0.1: unknown public key").
// - A peer without the secret does not even reach ZAP: it does not know the
//   server's public key, so the handshake fails inside libzmq (HELLO does not
//   open); a peer without CURVE fails the greeting's mechanism check. The
//   handler watches every binding socket of its context with a socket
//   monitor (zmq_socket_monitor: HANDSHAKE_FAILED_NO_DETAIL, _PROTOCOL,
//   _AUTH) and counts and logs those failures in the same rate-limited log
//   ("<name>: refused a CURVE connection (<n> so far): on
//   tcp://127.0.0.1:5555: handshake failed: ..." with the reason in words).
//   libzmq 4.3 names the listening endpoint in these events, not the peer's
//   address. HANDSHAKE_FAILED_AUTH on a server is this handler's own
//   refusal, already counted, so it is not counted twice.
//   Where the monitor is drained: on the handler's own thread, which already
//   polls the ZAP socket (50 ms at most between polls). The monitor sockets
//   join that poll, so an event is read as soon as it arrives, and nothing
//   is added to the sockets' send or receive paths (FramedSocket's receive,
//   ZmqTransport's I/O thread): a monitor costs the data path nothing.
// - Nothing a refused peer sends reaches the socket's owner.
//
// ZAP is one endpoint per context, and a context may hold several binding
// sockets (a ps server and a rendezvous coordinator), so the handler is
// shared: ZapHandler::acquire() returns the context's live handler or starts
// one. The table it keeps (context -> weak handler, under a mutex) is the one
// piece of process-wide state here, because libzmq's ZAP endpoint is itself
// process-wide per context; a handler dies with the last socket holding it,
// before the context (whose owner closes its sockets first).
//
// Ownership: the context and the Logger must outlive every holder of the
// handler. Thread safety: acquire() from any thread; the handler's thread
// owns its socket and the monitor sockets; refused() and watch_handshakes()
// from any thread. Errors: acquire() throws
// CommError when the ZAP endpoint cannot be bound, UsageError when the
// context's handler serves another job's keys. Blocking: the destructor joins
// the handler's thread (at most one poll interval, 50 ms).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/rate_limited_log.h"
#include "core/log.h"

namespace dtrain::comm::wire {

class ZapHandler {
 public:
  // The live handler of `context` accepting `client_key`, or a new one
  // named `name` (the first binder's name: "ps server 0").
  static std::shared_ptr<ZapHandler> acquire(zmq::context_t& context, const CurveKey& client_key,
                                             const std::string& name, Logger& logger);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Connections refused so far: by ZAP (unknown key or not CURVE) or in
  // libzmq's handshake (a watched socket's monitor).
  uint64_t refused() const { return refusals_.count(); }

  // Watches `socket`, a CURVE server in this handler's context, for
  // handshakes that fail inside libzmq (see above); until the socket closes
  // (its monitor then stops) or the handler goes. Call from the socket's
  // thread, before it binds. Throws CommError when libzmq cannot monitor it.
  void watch_handshakes(zmq::socket_t& socket);
  uint64_t accepted() const { return accepted_.load(); }

 private:
  struct Private {};

 public:
  ZapHandler(Private, zmq::context_t& context, const CurveKey& client_key, const std::string& name,
             Logger& logger);

 private:
  void serve(std::stop_token stop);
  // Reads one ZAP request and answers it.
  void answer_request();
  // Reads the events waiting on one monitor; false once its socket closed.
  bool read_monitor(zmq::socket_t& monitor);

  zmq::context_t& context_;
  std::string name_;
  CurveKey client_key_;
  zmq::socket_t socket_;  // REP on inproc://zeromq.zap.01; the thread's after construction
  RateLimitedLog refusals_;
  std::atomic<uint64_t> accepted_{0};
  std::mutex mutex_;
  std::vector<zmq::socket_t> new_monitors_;  // guarded by mutex_; the thread takes them
  std::jthread thread_;                      // last: stopped and joined before the socket closes
};

// HandshakeWatch: why the CURVE handshakes of a connecting socket failed, so
// that a caller whose reply never came can say so in its TimeoutError
// ("the CURVE handshake with it failed 12 time(s), the last: ...; another
// job secret or key file?"). A socket monitor (HANDSHAKE_FAILED_*) on the
// socket, read only by failures(), which the caller calls once its deadline
// passed: nothing on the data path. libzmq keeps at most 1000 unread events
// (the rest are dropped, the count then stops there). libzmq has one
// monitor per socket: an owner that monitors the socket itself afterwards
// (the ps client and the peer links watch their DEALERs' disconnects)
// replaces this one, whose failures() then stays "".
// Ownership: the context must outlive it; it must go before the socket
// closes or after, either is fine. Thread safety: the socket's thread only.
// Errors: the constructor throws CommError when libzmq cannot monitor.
class HandshakeWatch {
 public:
  // Call before `socket` connects.
  HandshakeWatch(zmq::context_t& context, zmq::socket_t& socket, const std::string& name);
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;

  // "" while no handshake failed; else the sentence above. Never blocks.
  std::string failures();

 private:
  zmq::socket_t monitor_;
  uint64_t failed_ = 0;
  std::string last_;
};

// Makes `socket` a CURVE server with auth's server pair (requires
// auth.curve()), has its context's ZAP handler watch its handshakes, and
// returns that handler; call before bind().
std::shared_ptr<ZapHandler> secure_binding_socket(zmq::context_t& context, zmq::socket_t& socket,
                                                  const JobAuth& auth, const std::string& name,
                                                  Logger& logger);

// Makes `socket` a CURVE client with auth's client pair that expects auth's
// server public key (requires auth.curve()); call before connect().
void secure_connecting_socket(zmq::socket_t& socket, const JobAuth& auth);

// Z85 text of a key (40 characters), as zmq_curve_keypair and the key files
// of docs/security.md write it.
std::string z85_key(const CurveKey& key);

}  // namespace dtrain::comm::wire
