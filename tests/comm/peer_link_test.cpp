// The PeerLink conformance suite (comm/peer/peer_link.h), run against every
// link: InProcPeerLink (ranks as threads over the in-memory hub) and
// ZmqPeerLink (ranks as threads of one process over ipc and tcp loopback).
// A World builds N linked ranks and emulates a death (without goodbye) and a
// replacement process for a rank. No test asserts a timing: waits have
// generous deadlines, and "promptly" means "before that deadline".
#include "comm/peer/peer_link.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "comm/peer/inproc_peer_link.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kGenerous = seconds(30);

Deadline generous() { return Deadline::after(kGenerous); }

std::vector<std::byte> bytes(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (const int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

std::vector<std::byte> text(const std::string& s) {
  std::vector<std::byte> out(s.size());
  for (size_t i = 0; i < s.size(); ++i) out[i] = static_cast<std::byte>(s[i]);
  return out;
}

std::string as_text(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// N ranks whose links see each other; each implementation of the suite's
// parameter builds one.
class World {
 public:
  virtual ~World() = default;
  virtual PeerLink& link(int rank) = 0;
  // The rank's process dies without a goodbye; its link must not be used
  // again until rejoin().
  virtual void kill(int rank) = 0;
  // A replacement process for `rank`: a fresh link.
  virtual void rejoin(int rank) = 0;
};

class InProcWorld final : public World {
 public:
  explicit InProcWorld(int n) : hub_(n) {
    for (int r = 0; r < n; ++r) links_.push_back(hub_.link(r));
  }
  ~InProcWorld() override { links_.clear(); }
  PeerLink& link(int rank) override { return *links_.at(static_cast<size_t>(rank)); }
  void kill(int rank) override { hub_.kill(rank); }
  void rejoin(int rank) override { links_.at(static_cast<size_t>(rank)) = hub_.rejoin(rank); }
  InProcPeerHub& hub() { return hub_; }

 private:
  InProcPeerHub hub_;
  std::vector<std::unique_ptr<PeerLink>> links_;
};

struct WorldKind {
  std::string name;
  std::function<std::unique_ptr<World>(int n)> make;
};

// What a listener heard, for waiting on one event with a deadline.
class Events {
 public:
  PeerLink::Listener listener() {
    return [this](int peer, PeerEvent event, const std::string& reason) {
      std::lock_guard lock(mutex_);
      heard_.emplace_back(peer, event, reason);
      changed_.notify_all();
    };
  }
  // The reason of the first (peer, event) heard, or "" if none before `deadline`.
  std::string wait_for(int peer, PeerEvent event, Deadline deadline = generous()) {
    std::unique_lock lock(mutex_);
    std::string reason;
    changed_.wait_until(lock, deadline.at(), [&] {
      for (const auto& [p, e, r] : heard_) {
        if (p == peer && e == event) {
          reason = r.empty() ? "(no reason)" : r;
          return true;
        }
      }
      return false;
    });
    return reason;
  }
  int count(int peer, PeerEvent event) {
    std::lock_guard lock(mutex_);
    int n = 0;
    for (const auto& [p, e, r] : heard_) n += (p == peer && e == event) ? 1 : 0;
    return n;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::tuple<int, PeerEvent, std::string>> heard_;
};

class PeerLinkConformance : public ::testing::TestWithParam<WorldKind> {
 protected:
  std::unique_ptr<World> make(int n) { return GetParam().make(n); }
};

TEST_P(PeerLinkConformance, PostThenReceiveKeepsOrderAndChannelsApart) {
  auto world = make(2);
  PeerLink& a = world->link(0);
  PeerLink& b = world->link(1);
  EXPECT_EQ(a.rank(), 0);
  EXPECT_EQ(b.size(), 2);
  a.post(1, 7, 1, bytes({1}), "test", generous());
  a.post(1, 8, 1, bytes({9}), "test", generous());
  a.post(1, 7, 2, bytes({2, 3}), "test", generous());
  a.post(1, 7, 3, {}, "test", generous());
  EXPECT_EQ(b.receive(0, 8, 1, "test", generous()), bytes({9}));
  EXPECT_EQ(b.receive(0, 7, 1, "test", generous()), bytes({1}));
  EXPECT_EQ(b.receive(0, 7, 2, "test", generous()), bytes({2, 3}));
  EXPECT_EQ(b.receive(0, 7, 3, "test", generous()), bytes({}));
  // Both ways.
  b.post(0, 7, 1, bytes({5}), "test", generous());
  EXPECT_EQ(a.receive(1, 7, 1, "test", generous()), bytes({5}));
}

TEST_P(PeerLinkConformance, ReceiveDiscardsEarlierStepsAndKeepsLaterOnes) {
  auto world = make(2);
  PeerLink& a = world->link(0);
  PeerLink& b = world->link(1);
  for (const uint64_t step : {1, 2, 3, 5}) {
    a.post(1, 4, step, bytes({static_cast<int>(step)}), "test", generous());
  }
  EXPECT_EQ(b.receive(0, 4, 3, "test", generous()), bytes({3}));
  // Steps 1 and 2 were discarded by that receive; 5 is kept.
  EXPECT_THROW(b.receive(0, 4, 2, "test", Deadline::after(milliseconds(50))), TimeoutError);
  EXPECT_EQ(b.try_receive(0, 4, 4), std::nullopt);
  EXPECT_EQ(b.receive(0, 4, 5, "test", generous()), bytes({5}));
}

TEST_P(PeerLinkConformance, TryReceiveReturnsAtOnce) {
  auto world = make(2);
  PeerLink& a = world->link(0);
  PeerLink& b = world->link(1);
  EXPECT_EQ(b.try_receive(0, 1, 1), std::nullopt);
  a.post(1, 1, 1, bytes({42}), "test", generous());
  // Messages between one pair arrive in order: once the marker on channel 2
  // is here, the post on channel 1 is too.
  a.post(1, 2, 1, {}, "marker", generous());
  b.receive(0, 2, 1, "marker", generous());
  EXPECT_EQ(b.try_receive(0, 1, 1), bytes({42}));
  EXPECT_EQ(b.try_receive(0, 1, 1), std::nullopt);
}

TEST_P(PeerLinkConformance, CallsFromSeveralThreadsGetTheirOwnReplies) {
  auto world = make(3);
  world->link(1).set_handler([](int from, uint32_t service, std::span<const std::byte> request) {
    return text(std::to_string(from) + "/" + std::to_string(service) + "/" + as_text(request));
  });
  std::vector<std::jthread> callers;
  std::atomic<int> wrong{0};
  for (const int caller : {0, 2}) {
    for (int t = 0; t < 3; ++t) {
      callers.emplace_back([&, caller, t] {
        for (int i = 0; i < 20; ++i) {
          const std::string request = std::to_string(t) + ":" + std::to_string(i);
          const auto reply =
              world->link(caller).call(1, 9, text(request), "model copy", generous());
          if (as_text(reply) != std::to_string(caller) + "/9/" + request) ++wrong;
        }
      });
    }
  }
  callers.clear();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_P(PeerLinkConformance, AHandlerThatThrowsFailsTheCallOnlyNamingThePeer) {
  auto world = make(2);
  world->link(1).set_handler([](int, uint32_t service, std::span<const std::byte>) {
    if (service == 1) throw std::runtime_error("no model for step 12");
    return bytes({7});
  });
  try {
    world->link(0).call(1, 1, {}, "gossip pull", generous());
    FAIL() << "call returned although the handler threw";
  } catch (const PeerLostError& e) {
    FAIL() << "a handler's failure is not a lost peer: " << e.what();
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.operation(), "gossip pull");
    EXPECT_TRUE(contains(e.what(), "no model for step 12")) << e.what();
  }
  // The peer stays alive and answers.
  EXPECT_TRUE(world->link(0).alive(1));
  EXPECT_EQ(world->link(0).call(1, 2, {}, "gossip pull", generous()), bytes({7}));
}

TEST_P(PeerLinkConformance, ACallWithNoHandlerIsRefused) {
  auto world = make(2);
  EXPECT_THROW(world->link(0).call(1, 1, {}, "gossip pull", generous()), CommError);
}

TEST_P(PeerLinkConformance, DeadlinesThrowTimeoutErrorNamingPeerAndOperation) {
  auto world = make(3);
  try {
    world->link(0).receive(2, 3, 41, "gossip step 41", Deadline::after(milliseconds(50)));
    FAIL() << "receive returned without a message";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), 2);
    EXPECT_EQ(e.operation(), "gossip step 41");
    EXPECT_TRUE(contains(e.what(), "step 41")) << e.what();
  }
  // A handler held back (on something local, never on a peer) outlives the
  // caller's deadline.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  world->link(1).set_handler([released](int, uint32_t, std::span<const std::byte>) {
    released.wait_for(kGenerous);
    return bytes({1});
  });
  try {
    world->link(0).call(1, 5, {}, "pull model", Deadline::after(milliseconds(50)));
    FAIL() << "call returned before its handler did";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.operation(), "pull model");
    EXPECT_TRUE(contains(e.what(), "service 5")) << e.what();
  }
  release.set_value();
  // Neither timeout failed the link.
  EXPECT_EQ(world->link(0).call(1, 5, {}, "pull model", generous()), bytes({1}));
}

TEST_P(PeerLinkConformance, AKilledPeerIsLostOnlyForWhatInvolvesIt) {
  auto world = make(3);
  Events events0;
  world->link(0).set_listener(events0.listener());
  world->link(1).post(0, 1, 1, bytes({11}), "test", generous());
  world->link(1).post(0, 2, 1, {}, "marker", generous());
  world->link(0).receive(1, 2, 1, "marker", generous());
  world->kill(1);
  EXPECT_NE(events0.wait_for(1, PeerEvent::kLost), "");
  EXPECT_FALSE(world->link(0).alive(1));
  // What it sent before dying is still delivered; then the loss shows.
  EXPECT_EQ(world->link(0).receive(1, 1, 1, "test", generous()), bytes({11}));
  try {
    world->link(0).receive(1, 1, 2, "gossip step 2", generous());
    FAIL() << "receive from a lost peer returned";
  } catch (const PeerLostError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.operation(), "gossip step 2");
  }
  EXPECT_THROW(world->link(0).try_receive(1, 1, 3), PeerLostError);
  EXPECT_THROW(world->link(0).post(1, 1, 3, bytes({1}), "post", generous()), PeerLostError);
  EXPECT_THROW(world->link(0).call(1, 1, {}, "call", generous()), PeerLostError);
  // The others go on.
  EXPECT_TRUE(world->link(0).alive(2));
  world->link(2).post(0, 1, 1, bytes({22}), "test", generous());
  EXPECT_EQ(world->link(0).receive(2, 1, 1, "test", generous()), bytes({22}));
}

TEST_P(PeerLinkConformance, AWaitingReceiveWakesWhenThePeerDies) {
  auto world = make(2);
  std::promise<void> waiting;
  std::jthread killer([&] {
    waiting.get_future().wait();
    world->kill(1);
  });
  waiting.set_value();
  EXPECT_THROW(world->link(0).receive(1, 1, 1, "gossip step 1", generous()), PeerLostError);
}

TEST_P(PeerLinkConformance, GoodbyeMakesThePeerLeft) {
  auto world = make(2);
  Events events0;
  world->link(0).set_listener(events0.listener());
  world->link(1).leave();
  world->link(1).leave();  // idempotent
  EXPECT_NE(events0.wait_for(1, PeerEvent::kLeft), "");
  EXPECT_EQ(events0.count(1, PeerEvent::kLost), 0);
  EXPECT_FALSE(world->link(0).alive(1));
  EXPECT_THROW(world->link(0).receive(1, 1, 1, "test", generous()), PeerLostError);
  EXPECT_THROW(world->link(0).call(1, 1, {}, "test", generous()), PeerLostError);
}

TEST_P(PeerLinkConformance, AReplacementJoinsAndMessagesFlowAgain) {
  auto world = make(3);
  Events events0;
  world->link(0).set_listener(events0.listener());
  world->kill(1);
  EXPECT_NE(events0.wait_for(1, PeerEvent::kLost), "");
  world->rejoin(1);
  world->link(1).set_handler([](int from, uint32_t, std::span<const std::byte> request) {
    auto reply = std::vector<std::byte>(request.begin(), request.end());
    reply.push_back(static_cast<std::byte>(from));
    return reply;
  });
  EXPECT_NE(events0.wait_for(1, PeerEvent::kJoined), "");
  EXPECT_TRUE(world->link(0).alive(1));
  world->link(0).post(1, 1, 1, bytes({3}), "test", generous());
  EXPECT_EQ(world->link(1).receive(0, 1, 1, "test", generous()), bytes({3}));
  world->link(1).post(0, 1, 1, bytes({4}), "test", generous());
  EXPECT_EQ(world->link(0).receive(1, 1, 1, "test", generous()), bytes({4}));
  EXPECT_EQ(world->link(0).call(1, 2, bytes({8}), "model copy", generous()), bytes({8, 0}));
}

TEST_P(PeerLinkConformance, BytesSentGrowsWithEveryMessage) {
  auto world = make(2);
  world->link(1).set_handler(
      [](int, uint32_t, std::span<const std::byte>) { return std::vector<std::byte>(100); });
  const uint64_t before = world->link(0).bytes_sent();
  world->link(0).post(1, 1, 1, std::vector<std::byte>(1000), "test", generous());
  const uint64_t after_post = world->link(0).bytes_sent();
  EXPECT_GE(after_post - before, 1000u);
  world->link(0).call(1, 1, std::vector<std::byte>(10), "test", generous());
  EXPECT_GE(world->link(0).bytes_sent() - after_post, 10u);
  EXPECT_GE(world->link(1).bytes_sent(), 100u);
}

TEST_P(PeerLinkConformance, AHandlerMayPost) {
  auto world = make(2);
  world->link(1).set_handler([&](int from, uint32_t, std::span<const std::byte>) {
    world->link(1).post(from, 6, 1, bytes({6}), "from handler", generous());
    return bytes({});
  });
  world->link(0).call(1, 1, {}, "test", generous());
  EXPECT_EQ(world->link(0).receive(1, 6, 1, "test", generous()), bytes({6}));
}

std::vector<WorldKind> world_kinds() {
  return {
      {"InProc", [](int n) { return std::make_unique<InProcWorld>(n); }},
  };
}

INSTANTIATE_TEST_SUITE_P(Links, PeerLinkConformance, ::testing::ValuesIn(world_kinds()),
                         [](const auto& info) { return info.param.name; });

// ---- InProcPeerHub's own hooks -------------------------------------------

TEST(InProcPeerHub, AKilledRanksOwnCallsThrow) {
  InProcPeerHub hub(2);
  auto a = hub.link(0);
  auto b = hub.link(1);
  hub.kill(0);
  try {
    a->post(1, 1, 1, bytes({1}), "gossip step 1", generous());
    FAIL() << "a killed rank posted";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 0);
    EXPECT_TRUE(contains(e.what(), "killed")) << e.what();
  }
  EXPECT_THROW(a->receive(1, 1, 1, "x", generous()), CommError);
  EXPECT_THROW(hub.link(0), UsageError);
}

TEST(InProcPeerHub, DelaysKeepTheOrderBetweenOnePair) {
  InProcPeerHub hub(3);
  std::mutex random_mutex;
  std::mt19937 random(7);
  hub.set_delay([&](int, int) {
    std::lock_guard lock(random_mutex);
    return std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(random));
  });
  auto a = hub.link(0);
  auto b = hub.link(1);
  auto c = hub.link(2);
  b->set_handler([](int, uint32_t, std::span<const std::byte> request) {
    return std::vector<std::byte>(request.begin(), request.end());
  });
  // Same (channel, step) 30 times: a receiver takes them in arrival order,
  // which must be the sending order.
  for (int i = 0; i < 30; ++i) a->post(1, 1, 0, bytes({i}), "test", generous());
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(b->receive(0, 1, 0, "test", generous()), bytes({i})) << "message " << i;
  }
  EXPECT_EQ(c->call(1, 1, bytes({5}), "test", generous()), bytes({5}));
  // A delayed message from a rank killed after sending it still arrives.
  c->post(0, 2, 1, bytes({9}), "test", generous());
  hub.kill(2);
  EXPECT_EQ(a->receive(2, 2, 1, "test", generous()), bytes({9}));
  EXPECT_THROW(a->receive(2, 2, 2, "test", generous()), PeerLostError);
}

TEST(InProcPeerHub, ARejoinDropsTheOldIncarnationsMessages) {
  InProcPeerHub hub(2);
  auto a = hub.link(0);
  auto b = hub.link(1);
  b->post(0, 1, 1, bytes({1}), "test", generous());
  b->post(0, 1, 2, bytes({2}), "test", generous());
  hub.kill(1);
  auto b2 = hub.rejoin(1);
  EXPECT_THROW(b->post(0, 1, 3, bytes({3}), "test", generous()), CommError);
  EXPECT_EQ(a->try_receive(1, 1, 1), std::nullopt);
  b2->post(0, 1, 1, bytes({7}), "test", generous());
  EXPECT_EQ(a->receive(1, 1, 1, "test", generous()), bytes({7}));
}

}  // namespace
}  // namespace dtrain::comm
