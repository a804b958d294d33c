// LinkShaper: an emulated slow link (bandwidth and latency) for the messages
// one process sends, for tests and benchmarks only (what a compressed
// collective gains on a 1 Gbit/s link, on a machine whose loopback is
// much faster).
//
// Model: one outgoing link per shaper (a network card shared by every peer
// the process sends to). A message of b bytes (the whole frame: header and
// payload) handed over at time `now` occupies the link after whatever is
// still on it and arrives one latency later:
//   link_free  = max(now, link_free) + b * 8 / (mbps * 1e6) s
//   release_at = link_free + latency
// Messages leave in the order they were handed over, none before its
// release_at. Both instants come from an injected clock, and the waits go
// through an injected sleep, so the unit test checks the schedule exactly
// (link_shaper_test.cpp) without measuring wall time.
//
// Two ways to use it:
//  - post(): the message is delivered on the shaper's own thread (a
//    std::jthread started on the first post, stopped and joined by the
//    destructor) at its release time; the caller returns at once. The
//    ZmqTransport uses this, so its sender is never blocked by the shaping.
//  - wait_for_release(): the caller sleeps until the message's release time
//    and then sends it itself. FramedSocket (the parameter server's sockets,
//    one thread per socket) uses this.
//
// Ownership: owns its thread and the queued deliveries. Thread safety: every
// member may be called from any thread. Errors: the constructor throws
// UsageError for mbps <= 0 or a negative latency; a delivery that throws
// is the deliverer's business (its exception is swallowed; the ZmqTransport's
// deliveries never throw). Blocking: post() never blocks; wait_for_release()
// and drain() block until the release times they wait for; the destructor
// drains (delivers what is queued, each at its release time) unless
// cancel() ran first.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <stop_token>
#include <thread>

namespace dtrain::comm {

struct LinkShaperOptions {
  // Link bandwidth in megabits per second (1e6 bits/s); must be > 0.
  double mbps = 1000.0;
  // One-way latency added to every message, in milliseconds; >= 0.
  double latency_ms = 0.0;
};

class LinkShaper {
 public:
  using Clock = std::chrono::steady_clock;
  using Now = std::function<Clock::time_point()>;
  using SleepUntil = std::function<void(Clock::time_point)>;

  // Empty `now` / `sleep_until`: the steady clock and
  // std::this_thread::sleep_until.
  explicit LinkShaper(LinkShaperOptions options, Now now = {}, SleepUntil sleep_until = {});
  LinkShaper(const LinkShaper&) = delete;
  LinkShaper& operator=(const LinkShaper&) = delete;
  ~LinkShaper();

  const LinkShaperOptions& options() const { return options_; }

  // Books a message of `bytes` on the link now and returns its release
  // time (the formula above). post() and wait_for_release() call it.
  Clock::time_point reserve(size_t bytes);
  // Runs `deliver` on the shaper's thread at the message's release time,
  // after every earlier posted delivery.
  void post(size_t bytes, std::function<void()> deliver);
  // Books the message and sleeps until its release time.
  void wait_for_release(size_t bytes);
  // Blocks until every posted delivery has run.
  void drain();
  // Drops the posted deliveries that have not started (a failed transport
  // need not send them).
  void cancel();

 private:
  struct Delivery {
    Clock::time_point release_at;
    std::function<void()> deliver;
  };
  // Advances link_free_ by the message's transmission time; its release
  // time. Called with mutex_ held.
  Clock::time_point book(Clock::time_point now, size_t bytes);
  void run(std::stop_token stop);

  LinkShaperOptions options_;
  Now now_;
  SleepUntil sleep_until_;
  Clock::duration latency_;

  std::mutex mutex_;
  std::condition_variable_any changed_;
  Clock::time_point link_free_{};  // guarded by mutex_
  std::deque<Delivery> queue_;     // guarded by mutex_
  bool delivering_ = false;        // guarded by mutex_: run() holds a popped delivery
  std::jthread thread_;            // last: stopped and joined before the members above go
};

}  // namespace dtrain::comm
