// Issue #18 item 10 at the parameter server: a flood of junk frames
// (garbage, another job's frames, bad MACs, malformed messages) is dropped,
// counted and logged rate-limited (the first 16, then every 1024th), and the
// server serves a real worker afterwards.
#include <gtest/gtest.h>

#include <thread>
#include <zmq.hpp>

#include "comm/wire/rate_limited_log.h"
#include "ps/client.h"
#include "ps/server.h"
#include "ps_test_util.h"
#include "testing/junk_frames.h"

namespace dtrain::ps {
namespace {

using namespace std::chrono_literals;
using dtrain::testing::LineLog;

constexpr uint64_t kJunk = 5 * comm::wire::RateLimitedLog::kLogEvery;

TEST(PsJunkFlood, TheServerLogsBoundedLinesAndServesARealWorkerAfterwards) {
  LineLog log;
  const comm::JobAuth auth("ps-flood", "s3cret");
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  options.optimizer.lr = 1.0f;
  Server server(options, auth, log.logger());
  std::jthread serving([&](std::stop_token stop) { server.run(stop); });

  zmq::context_t context(1);
  zmq::socket_t junk(context, zmq::socket_type::dealer);
  junk.set(zmq::sockopt::linger, 0);
  junk.connect(server.endpoint());
  dtrain::testing::send_junk(junk, kJunk, "ps-flood", comm::wire::MessageType::kData,
                             worker_rank(1, 0), server_rank(0));
  ASSERT_TRUE(log.wait_for_line(fmt::format("({} so far)", kJunk), Deadline::after(120s)))
      << log.all();
  EXPECT_EQ(log.count("ps server 0: dropped an inbound frame ("),
            comm::wire::RateLimitedLog::kLoggedInFull + 5)
      << log.all();
  EXPECT_LE(log.size(), comm::wire::RateLimitedLog::kLoggedInFull + 5 + 2) << log.all();

  ClientOptions co;
  co.server_endpoints = {server.endpoint()};
  co.timeout = 30s;
  Client client(co, auth, Logger::null());
  testing::expect_one_async_step(client);
  EXPECT_EQ(client.stats(0).frames_dropped, kJunk);
  client.finish();
}

}  // namespace
}  // namespace dtrain::ps
