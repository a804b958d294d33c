// The PeerLink conformance suite (comm/peer/peer_link.h), run against every
// link: InProcPeerLink (ranks as threads over the in-memory hub) and
// ZmqPeerLink (ranks as threads of one process over ipc and tcp loopback).
// A World builds N linked ranks and emulates a death (without goodbye) and a
// replacement process for a rank. No test asserts a timing: waits have
// generous deadlines, and "promptly" means "before that deadline".
#include "comm/peer/peer_link.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "comm/peer/connect_peer_link.h"
#include "comm/peer/inproc_peer_link.h"
#include "comm/peer/zmq_peer_link.h"
#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "core/log.h"
#include "multiprocess_job.h"
#include "testing/fault_fs.h"
#include "testing/ports.h"
#include "testing/process.h"

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

constexpr char kJob[] = "peer-link-test";
constexpr char kSecret[] = "peer link test secret";

ZmqPeerLinkOptions test_options(int rank, int n, const std::string& endpoint) {
  ZmqPeerLinkOptions options;
  options.rank = rank;
  options.world_size = n;
  options.bind_endpoint = endpoint;
  options.heartbeat_interval = milliseconds(50);
  // Generous: a loaded machine (sanitizers) must not lose a live peer.
  options.heartbeat_timeout = seconds(5);
  options.join_timeout = seconds(30);
  options.linger = milliseconds(500);
  return options;
}

// Ranks as threads of this process, each with its own ZeroMQ link, over ipc
// in a temporary folder or over tcp loopback. A death is crash_for_test()
// (sockets closed, no goodbye); a replacement binds its predecessor's
// endpoint with a new incarnation.
class ZmqWorld final : public World {
 public:
  using Tweak = std::function<void(ZmqPeerLinkOptions&)>;
  // `encrypt`: security.encrypt (CURVE on every link, docs/security.md).
  ZmqWorld(int n, bool ipc, Tweak tweak = {}, bool encrypt = false)
      : tweak_(tweak ? std::move(tweak) : [](ZmqPeerLinkOptions&) {}),
        encrypt_(encrypt),
        links_(static_cast<size_t>(n)) {
    for (int r = 0; r < n; ++r) {
      const std::string bind =
          ipc ? fmt::format("ipc://{}/peer-{}", dir_.path(), r) : std::string("tcp://127.0.0.1:0");
      links_[static_cast<size_t>(r)] = std::make_unique<ZmqPeerLink>(
          options(r, bind), JobAuth(kJob, kSecret, encrypt_), logger_);
      endpoints_.push_back(links_[static_cast<size_t>(r)]->endpoint());
    }
    for (auto& link : links_) link->connect(endpoints_);
  }
  ~ZmqWorld() override { links_.clear(); }
  PeerLink& link(int rank) override { return zmq(rank); }
  ZmqPeerLink& zmq(int rank) { return *links_.at(static_cast<size_t>(rank)); }
  void kill(int rank) override { zmq(rank).crash_for_test(); }
  void rejoin(int rank) override {
    auto& slot = links_.at(static_cast<size_t>(rank));
    slot.reset();
    slot = std::make_unique<ZmqPeerLink>(options(rank, endpoints_[static_cast<size_t>(rank)]),
                                         JobAuth(kJob, kSecret, encrypt_), logger_);
    slot->connect(endpoints_);
  }
  int size() const { return static_cast<int>(links_.size()); }
  const std::vector<std::string>& endpoints() const { return endpoints_; }

 private:
  ZmqPeerLinkOptions options(int rank, const std::string& bind) {
    ZmqPeerLinkOptions o = test_options(rank, size(), bind);
    tweak_(o);
    return o;
  }

  Tweak tweak_;
  bool encrypt_;
  testing::TempDir dir_;
  Logger logger_{
      std::getenv("PEER_LOG") ? LogLevel::kDebug : LogLevel::kOff,
      [](LogLevel, std::string_view m) { fprintf(stderr, "%s\n", std::string(m).c_str()); }};
  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<ZmqPeerLink>> links_;
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

// Ranks a and b exchange one message each way, so each has heard from the
// other and its connection to the other is up (a peer never heard from is
// lost only after the join timeout).
void meet(World& world, int a, int b) {
  constexpr uint32_t kMeetChannel = 0xFFFF;
  world.link(a).post(b, kMeetChannel, 0, {}, "meet", generous());
  world.link(b).receive(a, kMeetChannel, 0, "meet", generous());
  world.link(b).post(a, kMeetChannel, 0, {}, "meet", generous());
  world.link(a).receive(b, kMeetChannel, 0, "meet", generous());
}

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
  Events events0;
  auto world = make(3);
  world->link(0).set_listener(events0.listener());
  world->link(1).post(0, 1, 1, bytes({11}), "test", generous());
  world->link(1).post(0, 2, 1, {}, "marker", generous());
  world->link(0).receive(1, 2, 1, "marker", generous());
  meet(*world, 0, 1);
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
  meet(*world, 0, 1);
  std::promise<void> waiting;
  std::jthread killer([&] {
    waiting.get_future().wait();
    world->kill(1);
  });
  waiting.set_value();
  EXPECT_THROW(world->link(0).receive(1, 1, 1, "gossip step 1", generous()), PeerLostError);
}

TEST_P(PeerLinkConformance, GoodbyeMakesThePeerLeft) {
  Events events0;
  auto world = make(2);
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
  Events events0;
  auto world = make(3);
  world->link(0).set_listener(events0.listener());
  meet(*world, 0, 1);
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
      {"ZmqIpc", [](int n) { return std::make_unique<ZmqWorld>(n, true); }},
      {"ZmqTcp", [](int n) { return std::make_unique<ZmqWorld>(n, false); }},
      {"ZmqTcpCurve", [](int n) { return std::make_unique<ZmqWorld>(n, false, nullptr, true); }},
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

// ---- ZmqPeerLink's own behaviour ---------------------------------------------

// Waits until `condition` holds or the generous deadline passes.
bool eventually(const std::function<bool()>& condition) {
  const Deadline deadline = generous();
  while (!condition()) {
    if (deadline.expired()) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

wire::FramedSocketOptions fake_rank_options(uint32_t rank, const JobAuth& auth) {
  wire::FramedSocketOptions options;
  options.name = fmt::format("fake rank {}", rank);
  options.rank = rank;
  options.limits.job_id = auth.job_id();
  options.limits.world_size = 2;
  options.limits.receiver = wire::kAnyReceiver;
  options.accepted = {wire::MessageType::kHeartbeat, wire::MessageType::kPeerHello,
                      wire::MessageType::kPeerData, wire::MessageType::kGoodbye,
                      wire::MessageType::kPeerCall};
  return options;
}

TEST(ZmqPeerLink, APeerThatFallsSilentIsLostAfterTheHeartbeatTimeout) {
  // Rank 1 is a bare socket pair that says hello and then nothing, with its
  // connection kept open: only the heartbeat timeout can find it out.
  Logger logger(LogLevel::kOff, nullptr);
  const JobAuth auth(kJob, kSecret);
  zmq::context_t context(1);
  wire::FramedSocket fake_inbound(context, wire::FramedSocket::Role::kRouter, "tcp://127.0.0.1:0",
                                  fake_rank_options(1, auth), auth, logger);
  auto options = test_options(0, 2, "tcp://127.0.0.1:0");
  options.heartbeat_timeout = milliseconds(300);
  Events events;
  ZmqPeerLink link(options, auth, logger);
  link.set_listener(events.listener());
  link.connect({link.endpoint(), fake_inbound.endpoint()});
  wire::FramedSocket fake_outbound(context, wire::FramedSocket::Role::kDealer, link.endpoint(),
                                   fake_rank_options(1, auth), auth, logger);
  wire::FrameHeader hello;
  hello.type = wire::MessageType::kPeerHello;
  hello.receiver = 0;
  hello.sequence = 77;
  ASSERT_TRUE(fake_outbound.send({}, hello, std::span<const std::byte>{}));
  const std::string reason = events.wait_for(1, PeerEvent::kLost);
  EXPECT_TRUE(contains(reason, "stopped responding")) << reason;
  EXPECT_FALSE(link.alive(1));
  EXPECT_THROW(link.receive(1, 1, 1, "gossip step 1", generous()), PeerLostError);
  // The link had heard the hello: it is the fake rank's connection it lost.
  EXPECT_TRUE(fake_inbound.receive(Deadline::after(seconds(5))).has_value());
}

TEST(ZmqPeerLink, FramesFromOutsideTheJobAreDroppedAndCounted) {
  ZmqWorld world(2, /*ipc=*/false);
  PeerLink& rank0 = world.link(0);
  meet(world, 0, 1);
  const uint64_t dropped_before = world.zmq(0).dropped_frames();
  Logger logger(LogLevel::kOff, nullptr);
  zmq::context_t context(1);
  std::vector<std::byte> data(4 + 3, std::byte{0});  // channel 0, three bytes
  wire::FrameHeader header;
  header.type = wire::MessageType::kPeerData;
  header.receiver = 0;
  header.sequence = 1;
  header.tag = 5;
  // The right job with the wrong secret, then another job with the right one.
  const JobAuth wrong_secret(kJob, "not the secret");
  wire::FramedSocket outsider(context, wire::FramedSocket::Role::kDealer, world.endpoints()[0],
                              fake_rank_options(1, wrong_secret), wrong_secret, logger);
  ASSERT_TRUE(outsider.send({}, header, data));
  const JobAuth other_job("another job", kSecret);
  wire::FramedSocket stranger(context, wire::FramedSocket::Role::kDealer, world.endpoints()[0],
                              fake_rank_options(1, other_job), other_job, logger);
  ASSERT_TRUE(stranger.send({}, header, data));
  // Garbage: a short header, and a header-sized part of junk.
  zmq::socket_t junk(context, zmq::socket_type::dealer);
  junk.set(zmq::sockopt::linger, 0);
  junk.connect(world.endpoints()[0]);
  junk.send(zmq::str_buffer("hello"), zmq::send_flags::sndmore);
  junk.send(zmq::str_buffer("world"), zmq::send_flags::none);
  std::string noise(wire::kHeaderBytes, 'x');
  junk.send(zmq::buffer(noise), zmq::send_flags::sndmore);
  junk.send(zmq::str_buffer(""), zmq::send_flags::none);
  EXPECT_TRUE(eventually([&] { return world.zmq(0).dropped_frames() >= dropped_before + 4; }))
      << world.zmq(0).dropped_frames() - dropped_before << " frames dropped";
  EXPECT_EQ(rank0.try_receive(1, 0, 5), std::nullopt);
  EXPECT_TRUE(rank0.alive(1));
  // The real rank 1 still gets through.
  world.link(1).post(0, 0, 5, bytes({1}), "test", generous());
  EXPECT_EQ(rank0.receive(1, 0, 5, "test", generous()), bytes({1}));
}

TEST(ZmqPeerLink, AReplacementOfAPeerStillThoughtAliveIsLostThenJoined) {
  // Rank 1 is a bare socket pair: incarnation 77 says hello and takes a call
  // without answering; then incarnation 78 says hello. Nothing else could
  // have found 77 dead (its connection stays open, the timeouts are long).
  Logger logger(LogLevel::kOff, nullptr);
  const JobAuth auth(kJob, kSecret);
  zmq::context_t context(1);
  wire::FramedSocket fake_inbound(context, wire::FramedSocket::Role::kRouter, "tcp://127.0.0.1:0",
                                  fake_rank_options(1, auth), auth, logger);
  auto options = test_options(0, 2, "tcp://127.0.0.1:0");
  options.heartbeat_timeout = seconds(60);
  Events events;
  ZmqPeerLink link(options, auth, logger);
  link.set_listener(events.listener());
  link.connect({link.endpoint(), fake_inbound.endpoint()});
  auto say = [&](wire::FramedSocket& socket, wire::MessageType type, uint64_t incarnation,
                 uint64_t tag, std::vector<std::byte> payload) {
    wire::FrameHeader header;
    header.type = type;
    header.receiver = 0;
    header.sequence = incarnation;
    header.tag = tag;
    ASSERT_TRUE(socket.send({}, header, std::move(payload)));
  };
  wire::FramedSocket old_process(context, wire::FramedSocket::Role::kDealer, link.endpoint(),
                                 fake_rank_options(1, auth), auth, logger);
  say(old_process, wire::MessageType::kPeerHello, 77, 0, {});
  say(old_process, wire::MessageType::kPeerData, 77, 3, bytes({9, 0, 0, 0, 42}));
  EXPECT_EQ(link.receive(1, 9, 3, "test", generous()), bytes({42}));
  auto waiting = std::async(std::launch::async,
                            [&] { return link.call(1, 5, bytes({1}), "model copy", generous()); });
  // The call reached the old process, which will never answer it.
  for (;;) {
    std::optional<wire::Frame> frame = fake_inbound.receive(generous());
    ASSERT_TRUE(frame.has_value()) << "the call never reached rank 1";
    if (frame->header.type == wire::MessageType::kPeerCall) break;
  }
  say(old_process, wire::MessageType::kPeerData, 77, 4, bytes({9, 0, 0, 0, 43}));
  wire::FramedSocket new_process(context, wire::FramedSocket::Role::kDealer, link.endpoint(),
                                 fake_rank_options(1, auth), auth, logger);
  say(new_process, wire::MessageType::kPeerHello, 78, 0, {});
  const std::string lost = events.wait_for(1, PeerEvent::kLost);
  EXPECT_TRUE(contains(lost, "replaced")) << lost;
  EXPECT_NE(events.wait_for(1, PeerEvent::kJoined), "");
  EXPECT_THROW(waiting.get(), PeerLostError);
  // What the old process sent is gone with it, and what it sends now too.
  const uint64_t dropped = link.dropped_frames();
  say(old_process, wire::MessageType::kPeerData, 77, 5, bytes({9, 0, 0, 0, 44}));
  EXPECT_TRUE(eventually([&] { return link.dropped_frames() > dropped; }));
  EXPECT_EQ(link.try_receive(1, 9, 4), std::nullopt);
  EXPECT_EQ(link.try_receive(1, 9, 5), std::nullopt);
  say(new_process, wire::MessageType::kPeerData, 78, 6, bytes({9, 0, 0, 0, 45}));
  EXPECT_EQ(link.receive(1, 9, 6, "test", generous()), bytes({45}));
  EXPECT_TRUE(link.alive(1));
}

TEST(ZmqPeerLink, AShapedLinkStillDeliversEverything) {
  Logger logger(LogLevel::kOff, nullptr);
  std::vector<std::unique_ptr<ZmqPeerLink>> links;
  for (int r = 0; r < 2; ++r) {
    auto options = test_options(r, 2, "tcp://127.0.0.1:0");
    options.link = LinkShaperOptions{100.0, 2.0};
    links.push_back(std::make_unique<ZmqPeerLink>(options, JobAuth(kJob, kSecret), logger));
  }
  const std::vector<std::string> endpoints = {links[0]->endpoint(), links[1]->endpoint()};
  for (auto& link : links) link->connect(endpoints);
  links[1]->set_handler([](int, uint32_t, std::span<const std::byte> request) {
    return std::vector<std::byte>(request.begin(), request.end());
  });
  for (int step = 0; step < 5; ++step) {
    links[0]->post(1, 1, static_cast<uint64_t>(step), std::vector<std::byte>(10000), "test",
                   generous());
  }
  for (int step = 0; step < 5; ++step) {
    EXPECT_EQ(links[1]->receive(0, 1, static_cast<uint64_t>(step), "test", generous()).size(),
              10000u);
  }
  EXPECT_EQ(links[0]->call(1, 1, bytes({1, 2}), "test", generous()), bytes({1, 2}));
  EXPECT_GE(links[0]->bytes_sent(), 50000u);
}

TEST(ZmqPeerLink, AMessageOverTheLimitIsAUsageError) {
  Logger logger(LogLevel::kOff, nullptr);
  auto options = test_options(0, 2, "tcp://127.0.0.1:0");
  options.max_message_bytes = 16;
  ZmqPeerLink link(options, JobAuth(kJob, kSecret), logger);
  link.connect({link.endpoint(), "tcp://127.0.0.1:1"});
  EXPECT_THROW(link.post(1, 1, 1, std::vector<std::byte>(17), "test", generous()), UsageError);
  EXPECT_THROW(link.call(1, 1, std::vector<std::byte>(17), "test", generous()), UsageError);
}

// ---- connect_peer_link ---------------------------------------------------------

LaunchInfo launch_of(int rank, int n) {
  LaunchInfo launch;
  launch.rank = rank;
  launch.world_size = n;
  launch.source = "test";
  launch.settings.job_secret = kSecret;
  return launch;
}

PeerLinkSettings quick_settings() {
  PeerLinkSettings settings;
  settings.timeout = kGenerous;
  settings.heartbeat_interval = milliseconds(50);
  settings.heartbeat_timeout = seconds(5);
  return settings;
}

TEST(ConnectPeerLink, WithARunFolderAReplacementBindsItsPredecessorsEndpoint) {
  testing::TempDir dir;
  Logger logger(LogLevel::kOff, nullptr);
  Events events0;
  std::vector<std::unique_ptr<ZmqPeerLink>> links;
  for (int r = 0; r < 3; ++r) {
    LaunchInfo launch = launch_of(r, 3);
    launch.settings.run_dir = dir.path();
    links.push_back(connect_peer_link(kJob, launch, quick_settings(), logger));
    EXPECT_EQ(links.back()->endpoint(), run_dir_peer_endpoint(dir.path(), r));
  }
  links[0]->set_listener(events0.listener());
  links[0]->post(1, 1, 1, bytes({1}), "test", generous());
  EXPECT_EQ(links[1]->receive(0, 1, 1, "test", generous()), bytes({1}));
  links[1]->post(0, 1, 1, bytes({2}), "test", generous());
  EXPECT_EQ(links[0]->receive(1, 1, 1, "test", generous()), bytes({2}));
  links[1]->crash_for_test();
  EXPECT_NE(events0.wait_for(1, PeerEvent::kLost), "");
  links[1].reset();
  LaunchInfo again = launch_of(1, 3);
  again.settings.run_dir = dir.path();
  again.settings.restart_count = 1;
  links[1] = connect_peer_link(kJob, again, quick_settings(), logger);
  EXPECT_NE(events0.wait_for(1, PeerEvent::kJoined), "");
  links[0]->post(1, 1, 2, bytes({3}), "test", generous());
  EXPECT_EQ(links[1]->receive(0, 1, 2, "test", generous()), bytes({3}));
  links[1]->post(2, 1, 1, bytes({4}), "test", generous());
  EXPECT_EQ(links[2]->receive(1, 1, 1, "test", generous()), bytes({4}));
}

TEST(ConnectPeerLink, WithoutARunFolderTheRanksMeetThroughTheCoordinator) {
  Logger logger(LogLevel::kOff, nullptr);
  const std::string coordinator = fmt::format("127.0.0.1:{}", testing::free_loopback_port());
  std::vector<std::unique_ptr<ZmqPeerLink>> links(3);
  {
    std::vector<std::jthread> ranks;
    for (int r = 0; r < 3; ++r) {
      ranks.emplace_back([&, r] {
        LaunchInfo launch = launch_of(r, 3);
        launch.coordinator = coordinator;
        links[static_cast<size_t>(r)] = connect_peer_link(kJob, launch, quick_settings(), logger);
      });
    }
  }
  for (int r = 0; r < 3; ++r) ASSERT_NE(links[static_cast<size_t>(r)], nullptr) << "rank " << r;
  for (int from = 0; from < 3; ++from) {
    for (int to = 0; to < 3; ++to) {
      if (from == to) continue;
      links[static_cast<size_t>(from)]->post(to, 1, 1, bytes({from}), "test", generous());
      EXPECT_EQ(links[static_cast<size_t>(to)]->receive(from, 1, 1, "test", generous()),
                bytes({from}));
    }
  }
}

TEST(ConnectPeerLink, AReplacementWithoutARunFolderIsAConfigError) {
  Logger logger(LogLevel::kOff, nullptr);
  LaunchInfo launch = launch_of(1, 3);
  launch.coordinator = "127.0.0.1:1";
  launch.settings.restart_count = 2;
  try {
    connect_peer_link(kJob, launch, quick_settings(), logger);
    FAIL() << "a replacement without a run folder connected";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "DTRAIN_RUN_DIR")) << e.what();
  }
  launch.settings.restart_count = 0;
  launch.coordinator.clear();
  EXPECT_THROW(connect_peer_link(kJob, launch, quick_settings(), logger), ConfigError);
}

// ---- real processes ------------------------------------------------------------
// The test spawns its own binary once per rank (PeerLinkProcesses.DISABLED_Rank,
// which reads its role from DTRAIN_TEST_* variables), connected through
// connect_peer_link with the job's run folder. The last rank is the victim:
// SIGKILLed (its sockets close) or SIGSTOPped (it goes silent) once it met
// everyone; each survivor must then see PeerLostError naming it while
// waiting for its next message, long before that wait's deadline, and go
// on with the other survivors. In "replace", a new process for the victim's
// rank (DTRAIN_RESTART_COUNT=1) binds its endpoint, and the survivors gossip
// with it.

constexpr auto kChildDeadline = seconds(90);

void run_peer_processes(const std::string& scenario, int sig) {
  constexpr int kWorld = 3;
  test::ProcessJob job("PeerLinkProcesses.DISABLED_Rank", "peer-" + scenario, kWorld, kSecret);
  job.spawn_all(scenario);
  testing::ChildProcess& victim = job.children.back();
  ASSERT_TRUE(victim.wait_for_line(test::kReady, Deadline::after(kChildDeadline)))
      << "victim never got ready; output:\n"
      << victim.output();
  victim.signal(sig);
  if (sig == SIGKILL) {
    const auto status = victim.wait(Deadline::after(kChildDeadline));
    ASSERT_TRUE(status.has_value());
  }
  std::optional<testing::ChildProcess> replacement;
  if (scenario == "replace") {
    replacement.emplace(
        job.spawn(kWorld - 1, "replacement", kSecret, {{"DTRAIN_TEST_RESTART", "1"}}));
  }
  for (int r = 0; r + 1 < kWorld; ++r) {
    test::expect_exit_ok(job.children[static_cast<size_t>(r)], fmt::format("survivor {}", r),
                         kChildDeadline);
  }
  if (replacement) test::expect_exit_ok(*replacement, "replacement", kChildDeadline);
}

TEST(PeerLinkProcesses, AKilledPeerIsLostAndTheOthersGoOn) { run_peer_processes("kill", SIGKILL); }

TEST(PeerLinkProcesses, AStoppedPeerIsLostByItsSilence) { run_peer_processes("stop", SIGSTOP); }

TEST(PeerLinkProcesses, AReplacementBindsTheVictimsEndpointAndGossips) {
  run_peer_processes("replace", SIGKILL);
}

// Posts to each of `peers` on (channel, step) and receives each one's post.
void exchange(PeerLink& link, const std::vector<int>& peers, uint64_t step, int payload) {
  constexpr uint32_t channel = 1;
  for (const int p : peers) link.post(p, channel, step, bytes({payload}), "exchange", generous());
  for (const int p : peers) {
    EXPECT_EQ(
        link.receive(p, channel, step, fmt::format("exchange step {}", step), generous()).size(),
        1u);
  }
}

TEST(PeerLinkProcesses, DISABLED_Rank) {
  const int rank = std::stoi(test::env_or("DTRAIN_TEST_RANK", "-1"));
  const int world = std::stoi(test::env_or("DTRAIN_TEST_WORLD", "0"));
  const std::string scenario = test::env_or("DTRAIN_TEST_SCENARIO", "");
  ASSERT_GE(rank, 0) << "run by the multi-process tests only";
  std::printf("%s rank %d scenario %s\n", test::kStarted, rank, scenario.c_str());
  std::fflush(stdout);
  LaunchInfo launch = launch_of(rank, world);
  launch.settings.job_secret = test::env_or("DTRAIN_TEST_SECRET", "");
  launch.settings.run_dir = test::env_or("DTRAIN_TEST_IPC_DIR", "");
  launch.settings.restart_count = std::stoi(test::env_or("DTRAIN_TEST_RESTART", "0"));
  PeerLinkSettings settings;
  settings.timeout = seconds(60);
  settings.heartbeat_interval = milliseconds(100);
  // Short only where the silence is under test (a loaded machine under
  // sanitizers can starve an I/O thread for a while).
  settings.heartbeat_timeout = scenario == "stop" ? seconds(5) : seconds(20);
  Events events;
  auto link = connect_peer_link(test::env_or("DTRAIN_TEST_JOB", ""), launch, settings,
                                Logger::stderr_logger());
  link->set_listener(events.listener());
  const int victim = world - 1;
  std::vector<int> others;
  std::vector<int> survivors;
  for (int p = 0; p < world; ++p) {
    if (p != rank) others.push_back(p);
    if (p != rank && p != victim) survivors.push_back(p);
  }
  if (scenario == "replacement") {
    exchange(*link, others, 2, rank);
    return;  // the destructor says goodbye
  }
  exchange(*link, others, 0, rank);
  // The victim waits for every survivor's acknowledgement: then each has
  // its step 0 (a peer never heard from cannot be told from its replacement).
  constexpr uint32_t kAck = 2;
  if (rank == victim) {
    for (const int p : others) link->receive(p, kAck, 0, "acknowledgement", generous());
  } else {
    link->post(victim, kAck, 0, {}, "acknowledgement", generous());
  }
  if (rank == victim) {
    std::printf("%s\n", test::kReady);
    std::fflush(stdout);
    try {
      link->receive(0, 99, 0, "waiting to be killed", Deadline::after(kChildDeadline));
    } catch (const Error&) {
    }
    ADD_FAILURE() << "the victim was not killed";
    return;
  }
  try {
    link->receive(victim, 1, 1, "gossip step 1", Deadline::after(seconds(60)));
    ADD_FAILURE() << "received a message the victim never sent";
  } catch (const PeerLostError& e) {
    EXPECT_EQ(e.peer(), victim) << e.what();
    std::printf("survivor %d: %s\n", rank, e.what());
  } catch (const TimeoutError& e) {
    ADD_FAILURE() << "the victim's loss was waited out, not detected: " << e.what();
  }
  EXPECT_NE(events.wait_for(victim, PeerEvent::kLost), "");
  if (scenario == "replace") {
    EXPECT_NE(events.wait_for(victim, PeerEvent::kJoined, Deadline::after(seconds(60))), "");
    exchange(*link, {victim}, 2, rank);
  }
  // The survivors go on among themselves.
  exchange(*link, survivors, 3, rank);
  std::fflush(stdout);
}

}  // namespace
}  // namespace dtrain::comm
