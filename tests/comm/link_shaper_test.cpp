// LinkShaper: the release schedule under an injected clock, exactly.
#include "comm/transport/link_shaper.h"

#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;
using Clock = LinkShaper::Clock;

// A clock that only moves when the shaper sleeps (or the test sets it).
struct FakeTime {
  std::mutex mutex;
  Clock::time_point now{Clock::duration(1'000'000'000)};
  std::vector<Clock::time_point> slept_until;
  // Whether a sleep moves the clock to its end; off, the clock stands still
  // (no delivery can move "now" under a later post).
  bool advance = true;

  LinkShaper::Now clock() {
    return [this] {
      std::lock_guard lock(mutex);
      return now;
    };
  }
  LinkShaper::SleepUntil sleep() {
    return [this](Clock::time_point t) {
      std::lock_guard lock(mutex);
      slept_until.push_back(t);
      if (advance) now = std::max(now, t);
    };
  }
  void set(Clock::time_point t) {
    std::lock_guard lock(mutex);
    now = t;
  }
};

TEST(LinkShaper, ReleaseTimesFollowTheLinkModel) {
  FakeTime time;
  const Clock::time_point t0 = time.now;
  // 8 Mbit/s: 1000 bytes take exactly 1 ms; 5 ms latency.
  LinkShaper shaper({8.0, 5.0}, time.clock(), time.sleep());
  EXPECT_EQ(shaper.reserve(1000), t0 + 1ms + 5ms);
  // Handed over at the same instant: queued behind the first.
  EXPECT_EQ(shaper.reserve(2000), t0 + 3ms + 5ms);
  // Handed over after the link went idle: starts at once.
  time.set(t0 + 10ms);
  EXPECT_EQ(shaper.reserve(500), t0 + 10ms + 500us + 5ms);
  // While the link is still busy (until t0 + 10.5 ms).
  time.set(t0 + 10ms + 100us);
  EXPECT_EQ(shaper.reserve(0), t0 + 10ms + 500us + 5ms);
  EXPECT_EQ(shaper.reserve(125'000), t0 + 10ms + 500us + 125ms + 5ms);
}

TEST(LinkShaper, PostedDeliveriesRunInOrderAtTheirReleaseTimes) {
  FakeTime time;
  time.advance = false;  // all three are handed over at t0
  const Clock::time_point t0 = time.now;
  std::vector<int> delivered;
  {
    LinkShaper shaper({80.0, 2.0}, time.clock(), time.sleep());  // 10 000 bytes per ms
    for (int i = 0; i < 3; ++i) {
      shaper.post(10'000 * static_cast<size_t>(i + 1), [&, i] { delivered.push_back(i); });
    }
    shaper.drain();
  }
  EXPECT_EQ(delivered, (std::vector<int>{0, 1, 2}));
  const std::vector<Clock::time_point> expected{t0 + 1ms + 2ms, t0 + 3ms + 2ms, t0 + 6ms + 2ms};
  // Each delivery ran right after its sleep to its release time.
  EXPECT_EQ(time.slept_until, expected);
}

TEST(LinkShaper, WaitForReleaseSleepsUntilTheReleaseTime) {
  FakeTime time;
  const Clock::time_point t0 = time.now;
  LinkShaper shaper({8.0, 0.0}, time.clock(), time.sleep());
  shaper.wait_for_release(1000);
  shaper.wait_for_release(1000);
  EXPECT_EQ(time.slept_until, (std::vector<Clock::time_point>{t0 + 1ms, t0 + 2ms}));
}

TEST(LinkShaper, CancelDropsWhatHasNotStarted) {
  FakeTime time;
  int delivered = 0;
  std::mutex gate;
  std::unique_lock hold(gate);
  {
    LinkShaper shaper({8.0, 0.0}, time.clock(), time.sleep());
    // The first delivery blocks on `gate` until the test has cancelled.
    shaper.post(1, [&] {
      std::lock_guard wait(gate);
      ++delivered;
    });
    shaper.post(1, [&] { ++delivered; });
    shaper.post(1, [&] { ++delivered; });
    shaper.cancel();
    hold.unlock();
  }
  // The first may or may not have been taken by the thread before cancel().
  EXPECT_LE(delivered, 1);
}

TEST(LinkShaper, RejectsNonsensicalOptions) {
  EXPECT_THROW(LinkShaper({0.0, 0.0}), UsageError);
  EXPECT_THROW(LinkShaper({-1.0, 0.0}), UsageError);
  EXPECT_THROW(LinkShaper({1.0, -0.5}), UsageError);
}

}  // namespace
}  // namespace dtrain::comm
