// InProcTransport: the Transport contract (comm/transport/transport.h) for N ranks that
// are threads of one process, sharing an in-memory mailbox (InProcHub). It is
// how the collectives are tested with ranks as threads, as gloo does.
//
// Usage: build one InProcHub for the world size, then one InProcTransport per
// rank (hub.transport(r)), and hand each to the thread playing that rank.
// hub.kill(r) makes rank r "die": its own later calls throw CommError, and a
// peer waiting for a message from r (with none left queued) throws a
// CommError naming rank r, as if the process had been SIGKILLed.
//
// Ownership: the hub owns every queued message; each InProcTransport holds a
// reference to the hub, which must outlive it (the test that builds both keeps
// the hub on its stack for the ranks' whole life).
// Thread safety: every member of both types may be called from any thread;
// the Transport rule about concurrent recv() on one (peer, tag) applies.
// Blocking: recv() waits until a message arrives, the peer dies or the
// deadline passes (TimeoutError naming the peer and the tag); send() never
// blocks (unbounded queues).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "comm/transport/transport.h"

namespace dtrain::comm {

class InProcTransport;

class InProcHub {
 public:
  explicit InProcHub(int world_size);
  InProcHub(const InProcHub&) = delete;
  InProcHub& operator=(const InProcHub&) = delete;
  ~InProcHub();

  int size() const { return static_cast<int>(mailboxes_.size()); }
  // The transport of `rank`; each rank's may be taken once.
  std::unique_ptr<InProcTransport> transport(int rank);
  // Marks `rank` dead and wakes every waiter.
  void kill(int rank);
  bool is_dead(int rank) const;

 private:
  friend class InProcTransport;
  // Messages addressed to one rank, keyed by (sender, tag).
  struct Mailbox {
    std::mutex mutex;
    std::condition_variable arrived;
    std::map<std::pair<int, uint64_t>, std::deque<std::vector<std::byte>>> queues;
    std::atomic<bool> dead{false};  // read without `mutex` by other ranks' waiters
    bool taken = false;
    // Set by a peer's abort(): every later take() throws it.
    int abort_culprit = -1;
    std::string abort_reason;  // non-empty once a peer aborted
  };

  void deliver(int from, int to, uint64_t tag, std::vector<std::byte> message);
  // Pops the next message from `from` with `tag` for `to`, or throws.
  std::vector<std::byte> take(int from, int to, uint64_t tag, const std::string& what,
                              Deadline deadline);
  // Delivers `sender`'s abort notice to every other live rank; false (and
  // nothing sent) when `sender` itself already received one.
  bool abort_from(int sender, int culprit, const std::string& reason);

  std::vector<std::unique_ptr<Mailbox>> mailboxes_;
};

class InProcTransport final : public Transport {
 public:
  InProcTransport(const InProcTransport&) = delete;
  InProcTransport& operator=(const InProcTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return hub_.size(); }

  void send(int peer, uint64_t tag, std::span<const std::byte> payload, const std::string& what,
            Deadline deadline) override;
  std::vector<std::byte> recv(int peer, uint64_t tag, const std::string& what,
                              Deadline deadline) override;
  void recv_into(int peer, uint64_t tag, std::span<std::byte> out, const std::string& what,
                 Deadline deadline) override;
  void abort(int culprit, const std::string& reason) noexcept override;

 private:
  friend class InProcHub;
  InProcTransport(InProcHub& hub, int rank) : hub_(hub), rank_(rank) {}
  void check_usable(int peer, const std::string& what);
  // Marks this transport failed, then rethrows the current exception.
  [[noreturn]] void fail_and_rethrow();

  InProcHub& hub_;
  const int rank_;
  std::mutex failure_mutex_;
  std::string failure_;  // non-empty once failed
};

}  // namespace dtrain::comm
