// ps::LayeredStep: Client::push_step() without rows, sent one server at a
// time (docs/parameter-server.md "Pushes overlapped with backward"). Server
// s's request (its slice of the gradient, the pull behind it) goes out as
// soon as the caller says that every gradient tensor with floats in s's
// range is final, typically from autograd's gradient-ready hooks while
// backward still runs; finish() then waits for every reply and copies the
// pulled ranges into the parameters. wait(s) takes one server's reply alone
// (the next forward's per-layer wait, strategy/ps_overlap.h), so a range
// can be copied in while the later ones are still in flight.
//
// Each request is exactly the one push_step() would send to that server
// (kind kPush with the pull, the same fields and floats), so what the
// servers take, their sums and their replies are today's bit for bit; only
// the moment each request leaves differs. A request is a Client::Impl call
// of its own: it is kept as an open push, sent again to a server whose
// connection breaks, re-joined to a replacement and re-routed to a backup
// that takes the range over, as push_step()'s are.
//
// Ownership: refers to the Client, which must outlive it (the strategy owns
// both and destroys the step first). Thread safety: the client's calling
// thread only. Errors: UsageError for a server out of range, sent twice, a
// compressed push or gradients that do not match init's shapes; finish()
// throws as push_step() does (TimeoutError / CommError naming the server and
// "push"). A step dropped without finish() leaves its requests to the
// servers; their replies arrive later and are discarded as late ones.
// Blocking: send() only writes to ZeroMQ; finish() blocks, each server's
// reply bounded by the client's timeout.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ps/client.h"

namespace dtrain::ps {

class LayeredStep {
 public:
  // A step of `client` (after init) pushing with `push` at push.version and
  // pulling min_version.
  LayeredStep(Client& client, const DensePush& push, uint64_t min_version);
  ~LayeredStep();
  LayeredStep(const LayeredStep&) = delete;
  LayeredStep& operator=(const LayeredStep&) = delete;

  // Sends server `server`'s request built from `grads` (every tensor defined,
  // shapes as in init; only those with floats in the server's range are
  // read, now: the floats are encoded before send() returns).
  void send(int server, const std::vector<Tensor>& grads);
  bool sent(int server) const;
  // Waits for server `server`'s reply (sent before) and copies its range
  // into `out` (server 0's also sets the client's last_totals()); a no-op
  // once taken. Throws as finish() does, naming the server; the step is
  // then lost (drop it).
  void wait(int server, const std::vector<Tensor>& out);
  bool taken(int server) const;
  // Every server must have been sent. Waits for the replies not taken yet
  // in server order and copies them into `out`; returns the pull's version
  // (the minimum over the servers) and records it as the client's last.
  uint64_t finish(const std::vector<Tensor>& out);

 private:
  struct Calls;
  Client& client_;  // outlives this step (header)
  DensePush push_;
  uint64_t min_version_ = 0;
  std::unique_ptr<Calls> calls_;
};

}  // namespace dtrain::ps
