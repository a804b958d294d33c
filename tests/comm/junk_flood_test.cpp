// Issue #18 item 10: a flood of junk frames (garbage, another job's frames,
// bad MACs, malformed messages) at the coordinators. Each frame is dropped,
// counted and logged rate-limited (the first 16, then every 1024th), and
// the coordinator serves real ranks afterwards.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <zmq.hpp>

#include "comm/rendezvous/elastic_rendezvous.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/rate_limited_log.h"
#include "core/error.h"
#include "testing/junk_frames.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;
using dtrain::testing::LineLog;

// 5 x 1024: the last drop is one the log shows, so a test can wait for it.
constexpr uint64_t kJunk = 5 * wire::RateLimitedLog::kLogEvery;
constexpr size_t kLinesForTheJunk = wire::RateLimitedLog::kLoggedInFull + 5;

PeerEndpoint endpoint_of(int rank) {
  return PeerEndpoint{rank, "host", fmt::format("tcp://127.0.0.1:{}", 7100 + rank), ""};
}

// A raw DEALER connected to `address` ("host:port"), as an outsider has.
zmq::socket_t raw_dealer(zmq::context_t& context, const std::string& address) {
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect("tcp://" + address);
  return socket;
}

TEST(JunkFlood, TheRendezvousCoordinatorLogsBoundedLinesAndServesRealRanksAfterwards) {
  LineLog log;
  const JobAuth auth("flood-rdv", "s3cret");
  RendezvousServer server("127.0.0.1", 0, 2, auth, log.logger());
  zmq::context_t context(1);
  zmq::socket_t junk = raw_dealer(context, server.address());
  dtrain::testing::send_junk(junk, kJunk, "flood-rdv", wire::MessageType::kRegister, 0,
                             wire::kCoordinator);
  ASSERT_TRUE(log.wait_for_line(fmt::format("({} so far)", kJunk), Deadline::after(120s)))
      << log.all();
  EXPECT_EQ(server.dropped_frames(), kJunk);
  EXPECT_EQ(log.count("rendezvous coordinator: dropped an inbound frame ("), kLinesForTheJunk)
      << log.all();
  EXPECT_EQ(log.size(), kLinesForTheJunk) << log.all();
  // Junk message i is of kind i % 4; drops 1..16 are logged, then drop 1024
  // (message 1023, a one-part message) and every 1024th after it.
  for (const char* reason : {"not a dtrain frame", "does not match this job's", "MAC mismatch"}) {
    EXPECT_EQ(log.count(reason), 4u) << reason << " in\n" << log.all();
  }
  EXPECT_EQ(log.count("a message of 1 parts, expected 2"), 4u + 5u) << log.all();

  auto rank1 = std::async(std::launch::async, [&] {
    return rendezvous(server.address(), endpoint_of(1), 2, auth, Deadline::after(30s),
                      Logger::null());
  });
  EXPECT_EQ(
      rendezvous(server.address(), endpoint_of(0), 2, auth, Deadline::after(30s), Logger::null())
          .size(),
      2u);
  EXPECT_EQ(rank1.get().size(), 2u);
  EXPECT_TRUE(server.complete());
}

TEST(JunkFlood, TheElasticCoordinatorLogsBoundedLinesAndFormsAGroupAfterwards) {
  LineLog log;
  const JobAuth auth("flood-elastic", "s3cret");
  ElasticRendezvousOptions o;
  o.slots = 2;
  o.min_workers = 2;
  o.settle = 60s;
  ElasticRendezvousServer server("127.0.0.1", 0, o, auth, log.logger());
  server.set_alive(0, true);
  server.set_alive(1, true);
  zmq::context_t context(1);
  zmq::socket_t junk = raw_dealer(context, server.address());
  dtrain::testing::send_junk(junk, kJunk, "flood-elastic", wire::MessageType::kRegister, 1,
                             wire::kCoordinator);
  ASSERT_TRUE(log.wait_for_line(fmt::format("({} so far)", kJunk), Deadline::after(120s)))
      << log.all();
  EXPECT_EQ(server.dropped_frames(), kJunk);
  EXPECT_EQ(log.count("elastic coordinator: dropped an inbound frame ("), kLinesForTheJunk)
      << log.all();
  EXPECT_EQ(log.size(), kLinesForTheJunk) << log.all();

  ElasticRendezvousClient c0(server.address(), 0, 2, auth, Logger::null());
  ElasticRendezvousClient c1(server.address(), 1, 2, auth, Logger::null());
  auto joined1 =
      std::async(std::launch::async, [&] { return c1.join(std::nullopt, Deadline::after(30s)); });
  const auto m0 = c0.join(std::nullopt, Deadline::after(30s));
  const auto m1 = joined1.get();
  ASSERT_TRUE(m0 && m1);
  EXPECT_EQ(m0->slots, (std::vector<int>{0, 1}));
  EXPECT_EQ(m1->generation, 0u);
}

}  // namespace
}  // namespace dtrain::comm
