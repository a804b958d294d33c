// Rendezvous: how the ranks of a job learn each other's endpoints.
//
// One RendezvousServer (the coordinator; usually hosted by rank 0's process or
// by the launcher) listens on tcp host:port. Every rank calls rendezvous(),
// which connects to it, registers the rank's PeerEndpoint and returns the
// table of all `world_size` endpoints once every rank has registered.
//
// Protocol (frames of comm/wire/wire.h over a DEALER -> ROUTER connection,
// comm/wire/framed_socket.h; payloads in docs/wire-format.md):
//   rank -> coordinator  kRegister {world_size, PeerEndpoint}
//   coordinator -> rank  kStatus   {bitmap of registered ranks}, after each new
//                                   registration (lets a rank that times out
//                                   name the ranks that never arrived)
//   coordinator -> rank  kTable    {world_size PeerEndpoints, ordered by rank},
//                                   to everyone once the last rank registered
//   coordinator -> rank  kReject   {reason}: a world size that differs from the
//                                   coordinator's, a frame of another job or
//                                   failing authentication, a duplicate rank,
//                                   a registration after the table went out.
// A rank re-registering from the same connection is idempotent (after the
// table went out it gets the table again). With a job secret every frame is
// authenticated both ways (comm/wire/auth.h): a process without the secret
// can neither join nor read the table.
//
// Duplicate ranks. The coordinator cannot tell which of two processes that
// claim the same rank is the rightful one (without a job secret anyone can
// claim any rank), so it takes neither's word:
//  - before the table went out, a registration for a rank that another
//    connection holds VOIDS the rendezvous: the newcomer is refused at once
//    ("rank 1 is already registered by another process: host 'a', endpoint
//    tcp://... (registered first) ..."), every rank registered so far is told
//    at once that the rendezvous is void, and every later registration is
//    refused with the same reason. The table is never sent to anyone: no
//    rank can end up sending its frames to an outsider;
//  - after the table went out, such a registration is refused at once,
//    naming the holder (the table cannot be taken back; the rightful
//    process learns that its slot was taken instead of timing out).
// Each refusal says what to do: two processes were started with the same
// rank, or an outsider registered (set DTRAIN_JOB_SECRET).
//
// Errors: rendezvous() throws TimeoutError naming the ranks that had not
// registered when `deadline` passed (or saying that the coordinator never
// answered), CommError with the coordinator's reason when refused (at once,
// not at the deadline), DataError for a malformed table. The server never
// throws from its thread; it logs refused registrations and dropped frames
// rate-limited (the first 16, then every 1024th: a flood of junk cannot
// flood the log) through its Logger (alive for the server's lifetime).
// Thread safety: RendezvousServer's methods may be called from any thread;
// rendezvous() is a free function holding no shared state.
// Blocking: rendezvous() blocks until the table arrives, a refusal or the
// deadline; ~RendezvousServer stops its thread (within its 100 ms poll
// slice) and waits at most its linger (1 s) to flush replies.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::comm {

// Where one rank can be reached.
struct PeerEndpoint {
  int rank = 0;
  std::string host;          // host name; equal names mean "same machine" (ipc is usable)
  std::string tcp_endpoint;  // "tcp://10.0.0.7:41234"
  std::string ipc_endpoint;  // "ipc:///tmp/dtrain-....sock", or empty

  bool operator==(const PeerEndpoint&) const = default;
};

// Encoding of endpoint records inside rendezvous payloads (exposed for tests):
// u32 count, then the records (docs/wire-format.md).
std::vector<std::byte> encode_endpoints(std::span<const PeerEndpoint> endpoints);
// Throws DataError on truncation, oversized strings (> 1024 bytes), trailing
// bytes or a count above `max_count`.
std::vector<PeerEndpoint> decode_endpoints(std::span<const std::byte> bytes, size_t max_count);

class RendezvousServer {
 public:
  // Binds tcp://bind_host:port (port 0 picks a free port; see port()).
  // Throws CommError when the address cannot be bound.
  RendezvousServer(const std::string& bind_host, int port, int world_size, JobAuth auth,
                   Logger& logger);
  ~RendezvousServer();
  RendezvousServer(const RendezvousServer&) = delete;
  RendezvousServer& operator=(const RendezvousServer&) = delete;

  int port() const { return port_; }
  // "host:port" for rendezvous().
  std::string address() const;
  // True once every rank registered and the table goes out (set before it is
  // sent, so a rank holding the table finds it true).
  bool complete() const { return complete_.load(); }
  // The ranks registered so far, ascending.
  std::vector<int> registered() const;
  // Blocks until at least `count` ranks registered; false if `deadline`
  // passes first.
  bool wait_until_registered(size_t count, Deadline deadline) const;
  // Why the rendezvous is void (a rank registered twice), if it is.
  std::optional<std::string> conflict() const;
  // Inbound frames dropped so far (malformed, of another job, failing
  // authentication).
  uint64_t dropped_frames() const;

 private:
  struct State;
  void serve(std::stop_token stop);

  std::string bind_host_;
  int port_ = 0;
  JobAuth auth_;
  Logger& logger_;
  std::unique_ptr<State> state_;
  std::atomic<bool> complete_{false};
  std::jthread thread_;
};

// Registers `self` with the coordinator at `coordinator` ("host:port") and
// returns all endpoints, indexed by rank.
std::vector<PeerEndpoint> rendezvous(const std::string& coordinator, const PeerEndpoint& self,
                                     int world_size, const JobAuth& auth, Deadline deadline,
                                     Logger& logger);

}  // namespace dtrain::comm
