// FlServer and real FlClients (ClientTrainer) on threads over loopback: a
// fault-free deployed run computes what run_simulation computes for the
// same job and seed; clients outlive a server that stops and is replaced
// by one resumed from its state; a client gives up on a silent server
// naming its address.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "core/error.h"
#include "deploy_fixtures.h"
#include "fl/fl_client.h"
#include "fl/fl_server.h"
#include "fl/flat_model.h"
#include "fl/simulation.h"
#include "fl/upload_codec.h"
#include "testing/junk_frames.h"

namespace dtrain::fl {
namespace {

using std::chrono::milliseconds;

constexpr const char* kJob = "fl-deploy-test";
constexpr const char* kSecret = "deploy secret";
constexpr int64_t kClients = 3;

// Three clients of 20, 30 and 40 samples, three rounds, all must answer.
struct DeployJob : fixtures::DeployJob {
  DeployJob() : fixtures::DeployJob(kJob, kSecret, {20, 30, 40}, 3, 30.0) {}
};

void expect_near(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "value " << i;
}

// Clients on threads; returns their results once all ended (on kDone).
std::vector<FlClientResult> run_clients(const DeployJob& s, const std::string& server,
                                        const std::function<void()>& serve) {
  testing::LineLog log;
  return fixtures::run_with_clients(s, server, log, serve, /*stop_clients=*/false);
}

TEST(FlDeploy, AFaultFreeDeployedRunComputesWhatTheSimulationDoes) {
  DeployJob s;
  testing::LineLog log;
  FlServer server(s.server_options(), comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  const auto clients = run_clients(s, server.endpoint(), [&] { result = server.run(); });
  ASSERT_EQ(result.state.round, 3) << log.all();
  expect_near(result.state.weights, s.simulated());
  // The model moved: the comparison is not between two untouched models.
  EXPECT_FALSE(fixtures::same_bits(result.state.weights, flatten(*s.make_model())));
  for (const FlClientResult& c : clients) {
    EXPECT_TRUE(c.done);
    EXPECT_EQ(c.rounds_trained, 3);
    EXPECT_EQ(c.rounds_done, 3);
  }
}

TEST(FlDeploy, CompressedUploadsAggregateWhatTheSimulationAggregates) {
  DeployJob s;
  // The 6 x 8 first layer is above min_size 32: its deltas travel as QSGD
  // messages, whose rounding is seeded by (round, client) on both sides.
  s.upload.method = compress::Method::kQsgd;
  s.upload.min_size = 32;
  testing::LineLog log;
  FlServer server(s.server_options(), comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  run_clients(s, server.endpoint(), [&] { result = server.run(); });
  ASSERT_EQ(result.state.round, 3) << log.all();
  EXPECT_EQ(server.stats().rejected_updates, 0) << log.all();
  expect_near(result.state.weights, s.simulated());
  // Not the dense run's result: the messages were lossy.
  DeployJob dense;
  const std::vector<float> dense_weights = dense.simulated();
  EXPECT_FALSE(fixtures::same_bits(result.state.weights, dense_weights));
}

TEST(FlDeploy, ClientsOutliveAServerThatIsReplacedByAResumedOne) {
  DeployJob s;
  testing::LineLog log;
  const fixtures::Restarted run = fixtures::run_with_restart(s, log, 1);
  const FlServerResult& result = run.result;
  const std::vector<FlClientResult>& clients = run.clients;
  ASSERT_EQ(result.state.round, 3) << log.all();
  expect_near(result.state.weights, s.simulated());
  for (const FlClientResult& c : clients) {
    EXPECT_TRUE(c.done);
    EXPECT_EQ(c.rounds_trained, 3);
  }
}

TEST(FlDeploy, FedProxClientsSendThePartialWorkThatFitsTheDeadline) {
  DeployJob s;
  s.config.algorithm = "fedprox";
  s.config.proximal_mu = 0.01;
  s.config.round_timeout_s = 4.0;
  s.config.rounds = 2;
  testing::LineLog log;
  FlServerOptions so = s.server_options();
  std::vector<RoundReport> reports;
  so.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  FlServer server(so, comm::JobAuth(kJob, kSecret), log.logger());
  std::vector<std::jthread> threads;
  std::vector<ClientUpdate> sent(kClients);
  std::vector<FlClientResult> results(kClients);
  for (int64_t k = 0; k < kClients; ++k) {
    threads.emplace_back([&, k] {
      FlClientOptions o = s.client_options(k, server.endpoint());
      o.partial_work = true;
      // Client 2 (40 samples, E = 2, B = 10: 8 steps) is modelled at 1 s a
      // step: from round 2 on only floor(0.8 * 4 s / 1 s) = 3 steps fit.
      if (k == 2) o.seconds_per_step = [] { return 1.0; };
      o.tamper = [&sent, k](ClientUpdate& u) { sent[static_cast<size_t>(k)] = u; };
      FlClient client(o, comm::JobAuth(kJob, kSecret), log.logger());
      results[static_cast<size_t>(k)] = client.run();
    });
  }
  const FlServerResult result = server.run();
  threads.clear();
  ASSERT_EQ(reports.size(), 2u) << log.all();
  EXPECT_TRUE(reports[0].partial.empty());
  EXPECT_EQ(reports[1].partial, (std::vector<int64_t>{2}));
  EXPECT_EQ(reports[1].participated, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(sent[2].round, 2);
  EXPECT_EQ(sent[2].steps, 3);
  EXPECT_TRUE(sent[2].partial);
  EXPECT_EQ(sent[1].steps, 6);
  EXPECT_FALSE(sent[1].partial);
  EXPECT_EQ(result.state.round, 2);
}

TEST(FlDeploy, AClientGivesUpOnASilentServerNamingItsAddress) {
  DeployJob s;
  testing::LineLog log;
  FlClientOptions o = s.client_options(0, "tcp://127.0.0.1:1");
  o.server_timeout = milliseconds(300);
  FlClient client(o, comm::JobAuth(kJob, kSecret), log.logger());
  try {
    client.run();
    ADD_FAILURE() << "expected a TimeoutError";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("the fl server at tcp://127.0.0.1:1"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dtrain::fl
