// DP-FedAvg's accountant in the deployed mode (fl/round_accountant.h in
// fl/fl_server.h): FlServer and real FlClients on threads over loopback,
// with secure aggregation. The server reports the epsilon of a
// privacy::RdpAccountant stepped by hand once per applied round at q = m / K
// (the simulation's figures for the same rounds), stops before the round
// that would exceed fl.dp_target_epsilon and still tells its clients kDone,
// resumes its accountant after a restart, and accounts q = 1 when it can
// only sample from m connected clients. Also RoundAccountant by itself.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "core/error.h"
#include "deploy_fixtures.h"
#include "fl/round_accountant.h"
#include "privacy/rdp_accountant.h"

namespace dtrain::fl {
namespace {

using std::chrono::milliseconds;

constexpr const char* kJob = "fl-dp-deploy-test";
constexpr const char* kSecret = "dp deploy secret";

// K = 4 clients of 20 samples, m = 3 a round (q = 3 / 4), DP-FedAvg with
// secure aggregation.
struct DpJob : fixtures::DeployJob {
  explicit DpJob(int64_t rounds)
      : fixtures::DeployJob(kJob, kSecret, {20, 20, 20, 20}, rounds, 30.0) {
    use_secure_aggregation();
    config.fraction = 0.75;
    config.dp_clip = 0.5;
    config.dp_noise_multiplier = 0.8;
  }

  // Epsilon (Balle's, classic) after each of 1..rounds rounds at sampling
  // rate q, stepped by hand.
  std::vector<privacy::PrivacySpent> by_hand(int64_t rounds, double q) const {
    privacy::RdpAccountant a;
    std::vector<privacy::PrivacySpent> spent;
    for (int64_t r = 0; r < rounds; ++r) {
      a.step(q, config.dp_noise_multiplier);
      spent.push_back(a.epsilon(config.dp_delta));
    }
    return spent;
  }
};

fixtures::DeployedRun run_deployed(const DpJob& s, testing::LineLog& log, FlServerOptions o) {
  return fixtures::run_server(s, log, std::move(o), /*stop_clients=*/false);
}

TEST(FlDpDeploy, TheServerReportsTheAccountantsEpsilonPerRoundAsTheSimulation) {
  const DpJob s(3);
  testing::LineLog log;
  const fixtures::DeployedRun run = run_deployed(s, log, s.server_options());
  ASSERT_EQ(run.result.state.round, 3) << log.all();
  ASSERT_EQ(run.reports.size(), 3u);
  const std::vector<privacy::PrivacySpent> hand = s.by_hand(3, 3.0 / 4.0);
  std::vector<RoundReport> simulated;
  SimulationOptions so = s.simulation_options();
  so.on_round = [&simulated](const RoundReport& r) { simulated.push_back(r); };
  run_simulation(so);
  ASSERT_EQ(simulated.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const RoundReport& r = run.reports[i];
    ASSERT_TRUE(r.epsilon.has_value()) << "round " << r.round;
    ASSERT_TRUE(r.epsilon_classic.has_value());
    EXPECT_EQ(*r.epsilon, hand[i].balle) << "round " << r.round;
    EXPECT_EQ(*r.epsilon_classic, hand[i].classic) << "round " << r.round;
    EXPECT_EQ(*r.epsilon, *simulated[i].epsilon) << "round " << r.round;
    EXPECT_EQ(r.sampled.size(), 3u);
    EXPECT_TRUE(r.secure);
  }
  EXPECT_GT(hand[2].balle, hand[0].balle);
  EXPECT_FALSE(run.result.budget_exhausted);
  // The state to checkpoint carries the accountant of the three rounds.
  privacy::RdpAccountant restored;
  restored.restore(privacy::RdpAccountantState::from_map(run.result.state.accountant));
  EXPECT_EQ(restored.steps(), 3);
  EXPECT_EQ(restored.epsilon(s.config.dp_delta).balle, hand[2].balle);
}

TEST(FlDpDeploy, TheBudgetStopsTheRunBeforeTheRoundThatWouldExceedIt) {
  DpJob s(6);
  const std::vector<privacy::PrivacySpent> hand = s.by_hand(3, 3.0 / 4.0);
  s.config.dp_target_epsilon = (hand[1].balle + hand[2].balle) / 2;  // 2 rounds fit, not 3
  testing::LineLog log;
  FlServerOptions o = s.server_options();
  std::vector<int64_t> checkpointed;
  o.on_checkpoint = [&checkpointed](const ServerState& state) {
    checkpointed.push_back(state.round);
  };
  const fixtures::DeployedRun run = run_deployed(s, log, o);
  EXPECT_TRUE(run.result.budget_exhausted) << log.all();
  EXPECT_NE(run.result.budget_stop.find("privacy budget: stopped before round 3"),
            std::string::npos)
      << run.result.budget_stop;
  EXPECT_FALSE(run.result.stopped);
  EXPECT_EQ(run.result.state.round, 2);
  ASSERT_EQ(run.reports.size(), 2u);
  for (const RoundReport& r : run.reports) EXPECT_LE(*r.epsilon, s.config.dp_target_epsilon);
  EXPECT_EQ(checkpointed, (std::vector<int64_t>{1, 2}));
  // The run ended normally: every client was told the job is done after round 2.
  for (const FlClientResult& c : run.clients) {
    EXPECT_TRUE(c.done);
    EXPECT_EQ(c.rounds_done, 2);
  }
}

TEST(FlDpDeploy, ARestartedServerContinuesItsAccountant) {
  const DpJob s(3);
  testing::LineLog log;
  const fixtures::Restarted run = fixtures::run_with_restart(s, log, 1);
  ASSERT_TRUE(run.saved.has_value());
  EXPECT_FALSE(run.saved->accountant.empty());
  const FlServerResult& result = run.result;
  const std::vector<RoundReport>& reports = run.reports;
  ASSERT_EQ(result.state.round, 3) << log.all();
  ASSERT_EQ(reports.size(), 2u);
  const std::vector<privacy::PrivacySpent> hand = s.by_hand(3, 3.0 / 4.0);
  EXPECT_EQ(reports[0].round, 2);
  EXPECT_EQ(*reports[0].epsilon, hand[1].balle);  // two rounds spent, not one
  EXPECT_EQ(*reports[1].epsilon, hand[2].balle);
}

TEST(FlDpDeploy, AResumeStateWithoutItsAccountantIsRefused) {
  const DpJob s(3);
  FlServerOptions o = s.server_options();
  ServerState state;
  state.round = 2;
  state.weights = o.initial_weights;
  o.resume = state;  // no accountant: the two rounds' privacy cost is unknown
  testing::LineLog log;
  try {
    FlServer server(o, s.auth(), log.logger());
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("fl server: the resume state (round 2) has no DP "
                                         "accountant"),
              std::string::npos)
        << e.what();
  }
}

TEST(FlDpDeploy, SamplingFromFewerConnectedClientsAccountsTheHigherRate) {
  // K = 5, m = 3, but only clients 0..2 exist: every round samples all 3
  // connected clients, so each client's chance is 1, not 3 / 5.
  DpJob s(2);
  s.config.clients = 5;
  s.config.fraction = 0.6;
  s.config.min_fit_clients = 3;
  s.clients = 3;
  s.parts.resize(3);
  FlServerOptions o = s.server_options();
  o.fill_timeout = milliseconds(200);  // waits for all K, then starts with 3
  testing::LineLog log;
  const fixtures::DeployedRun run = run_deployed(s, log, o);
  ASSERT_EQ(run.reports.size(), 2u) << log.all();
  const std::vector<privacy::PrivacySpent> full = s.by_hand(2, 1.0);
  const std::vector<privacy::PrivacySpent> nominal = s.by_hand(2, 3.0 / 5.0);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(*run.reports[i].epsilon, full[i].balle);
    EXPECT_GT(*run.reports[i].epsilon, nominal[i].balle);
  }
}

TEST(RoundAccountant, WithoutDpItIsInert) {
  FlConfig c;
  const RoundAccountant a(c, 5, {}, "test");  // no accountant needed to resume
  EXPECT_FALSE(a.enabled());
  EXPECT_FALSE(a.budget_stop(6, 0.1).has_value());
  RoundReport report;
  ServerState state;
  a.record(report, state);
  EXPECT_FALSE(report.epsilon.has_value());
  EXPECT_TRUE(state.accountant.empty());
}

TEST(RoundAccountant, StepsRecordsStopsAndResumes) {
  FlConfig c;
  c.clients = 10;
  c.fraction = 0.5;
  c.dp_clip = 1.0;
  c.dp_noise_multiplier = 1.5;
  RoundAccountant a(c, 0, {}, "test");
  a.step(c.dp_sampling_rate());
  a.step(c.dp_sampling_rate());
  RoundReport report;
  ServerState state;
  a.record(report, state);
  privacy::RdpAccountant hand;
  hand.step(0.5, 1.5, 2);
  EXPECT_EQ(*report.epsilon, hand.epsilon(c.dp_delta).balle);
  EXPECT_EQ(*report.epsilon_classic, hand.epsilon(c.dp_delta).classic);
  // Resumed from the recorded state: the same spent epsilon.
  const RoundAccountant resumed(c, 2, state.accountant, "test");
  RoundReport again;
  ServerState state2;
  resumed.record(again, state2);
  EXPECT_EQ(*again.epsilon, *report.epsilon);
  EXPECT_EQ(state2.accountant, state.accountant);
  // A budget between 2 and 3 rounds stops before round 3.
  hand.step(0.5, 1.5);
  c.dp_target_epsilon = (*report.epsilon + hand.epsilon(c.dp_delta).balle) / 2;
  const RoundAccountant budgeted(c, 2, state.accountant, "test");
  const std::optional<std::string> stop = budgeted.budget_stop(3, 0.5);
  ASSERT_TRUE(stop.has_value());
  EXPECT_NE(stop->find("stopped before round 3"), std::string::npos) << *stop;
  EXPECT_FALSE(budgeted.budget_stop(3, 0.0).has_value());  // q = 0 spends nothing
  EXPECT_THROW(RoundAccountant(c, 2, {}, "test"), UsageError);
}

TEST(RoundAccountant, SamplingRateIsSampledOverThePool) {
  EXPECT_EQ(sampling_rate(3, 4), 0.75);
  EXPECT_EQ(sampling_rate(4, 4), 1.0);
  FlConfig c;
  c.clients = 100;
  c.fraction = 0.1;
  EXPECT_EQ(sampling_rate(10, 100), c.dp_sampling_rate());  // the simulation's q, bit for bit
  EXPECT_THROW(sampling_rate(5, 4), UsageError);
  EXPECT_THROW(sampling_rate(0, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::fl
