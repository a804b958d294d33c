// Secure aggregation in the deployed mode (fl/fl_secagg.h): FlServer and
// real FlClients on threads over loopback run the four SecAgg phases per
// round. A fault-free run computes what plain FedAvg computes (the
// sample-weighted mean, fl/private_update.h) within the fixed-point error; a client that goes
// silent after masking is recovered; too many silent clients fail the round naming the phase; a
// malformed SecAgg answer is rejected naming the client and the phase. Also the new payloads'
// encoding (fl/fl_protocol.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <stop_token>
#include <thread>

#include "core/error.h"
#include "deploy_fixtures.h"
#include "fl/fl_client.h"
#include "fl/fl_protocol.h"
#include "fl/fl_server.h"
#include "fl/flat_model.h"
#include "fl/simulation.h"
#include "testing/junk_frames.h"

namespace dtrain::fl {
namespace {

using std::chrono::milliseconds;

constexpr const char* kJob = "fl-secagg-deploy-test";
constexpr const char* kSecret = "secagg deploy secret";

// n clients of 20 samples with secure aggregation; a round closes with one
// included client and is not repeated.
struct SecAggJob : fixtures::DeployJob {
  std::set<int64_t> silent_after_masking;
  std::set<int64_t> plain_clients;  // clients whose job lacks secure aggregation
  std::function<void(int64_t, int, std::vector<std::byte>&)> tamper;

  SecAggJob(int64_t n, int64_t rounds, double timeout_s)
      : fixtures::DeployJob(kJob, kSecret, std::vector<int64_t>(static_cast<size_t>(n), 20), rounds,
                            timeout_s) {
    use_secure_aggregation();
    max_round_attempts = 1;
    customize_client = [this](int64_t id, FlClientOptions& o) {
      if (silent_after_masking.count(id) != 0) o.secagg_silent_after_phase = 2;
      if (plain_clients.count(id) != 0) o.fl.secure_aggregation = false;
      if (tamper) {
        o.secagg_tamper = [this, id](int phase, std::vector<std::byte>& m) {
          tamper(id, phase, m);
        };
      }
    };
  }
  SecAggJob(const SecAggJob&) = delete;  // customize_client holds `this`
  SecAggJob& operator=(const SecAggJob&) = delete;

  std::vector<float> plain_fedavg() const {
    SimulationOptions o = simulation_options();
    o.config.secure_aggregation = false;  // plain FedAvg
    o.config.dp_clip = 0;
    return run_simulation(o).state.weights;
  }
};

void run_with_clients(const SecAggJob& s, const std::string& server, testing::LineLog& log,
                      const std::function<void()>& serve) {
  fixtures::run_with_clients(s, server, log, serve);
}

// The fixed-point code's error per value and round is far below this
// (clip 10, 5 clients: 10 / 2^28 per summand); the tolerance leaves room
// for float rounding (the deployed mean divides a float sum by the weights).
void expect_near(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4) << "value " << i;
}

TEST(FlSecAggDeploy, AFaultFreeRunComputesWhatPlainFedAvgComputes) {
  SecAggJob s(4, 3, 30.0);
  // Unequal parts: the clients weigh n_k / n_bar inside the masked sum.
  s.parts = fixtures::consecutive_parts({10, 20, 30, 20});
  testing::LineLog log;
  FlServer server(s.server_options(), comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  run_with_clients(s, server.endpoint(), log, [&] { result = server.run(); });
  ASSERT_EQ(result.state.round, 3) << log.all();
  EXPECT_EQ(server.stats().rejected_updates, 0) << log.all();
  expect_near(result.state.weights, s.plain_fedavg());
  EXPECT_FALSE(fixtures::same_bits(result.state.weights, flatten(*s.make_model())));
  // Not bit-identical to the plain run: the sum went through the fixed-point code.
  EXPECT_FALSE(fixtures::same_bits(result.state.weights, s.plain_fedavg()));
}

TEST(FlSecAggDeploy, WithDpItComputesWhatTheSecureSimulationComputes) {
  SecAggJob s(4, 2, 30.0);
  s.config.dp_clip = 0.5;
  s.config.dp_noise_multiplier = 0.3;
  testing::LineLog log;
  FlServer server(s.server_options(), comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  run_with_clients(s, server.endpoint(), log, [&] { result = server.run(); });
  ASSERT_EQ(result.state.round, 2) << log.all();
  // Same seed: the same clipped inputs, the same noise shares (the clients'
  // streams) and server noise; only the fixed-point rounding differs.
  expect_near(result.state.weights, s.simulated());
  // The noise is there: far from plain FedAvg's model.
  const std::vector<float> plain = s.plain_fedavg();
  double largest = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    largest = std::max(largest, std::abs(static_cast<double>(result.state.weights[i] - plain[i])));
  }
  EXPECT_GT(largest, 1e-2);
}

TEST(FlSecAggDeploy, AClientSilentAfterMaskingIsRecoveredAndItsInputCounts) {
  // One round: the silent client missed round 1's deadline, so a second
  // round samples it only if its next join came first (fl/fl_server.h).
  SecAggJob s(5, 1, 4.0);
  s.silent_after_masking = {4};
  testing::LineLog log;
  const fixtures::DeployedRun run = fixtures::run_server(s, log, s.server_options());
  const FlServerResult& result = run.result;
  const std::vector<RoundReport>& reports = run.reports;
  ASSERT_EQ(result.state.round, 1) << log.all();
  ASSERT_EQ(reports.size(), 1u);
  // Client 4 masked its input (it is in U3), so the recovery removes its
  // self-mask from the other clients' shares and its update is in the sum.
  EXPECT_EQ(reports[0].participated, (std::vector<int64_t>{0, 1, 2, 3, 4})) << log.all();
  EXPECT_GE(log.count("secagg phase 3 (unmasking): no answer by its deadline from [4]"), 1u)
      << log.all();
  expect_near(result.state.weights, s.plain_fedavg());
}

TEST(FlSecAggDeploy, TooManySilentClientsFailTheRoundNamingThePhase) {
  SecAggJob s(5, 1, 3.0);
  s.silent_after_masking = {2, 3, 4};  // 2 unmasking answers, threshold 3 of 5
  testing::LineLog log;
  FlServer server(s.server_options(), comm::JobAuth(kJob, kSecret), log.logger());
  std::string error;
  run_with_clients(s, server.endpoint(), log, [&] {
    try {
      server.run();
    } catch (const CommError& e) {
      error = e.what();
    }
  });
  EXPECT_NE(error.find("fl server round 1"), std::string::npos) << error;
  EXPECT_NE(error.find("phase 3 (unmasking): 2 of 5 client(s) answered [0, 1], threshold 3"),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("gave up after 1 attempt(s)"), std::string::npos) << error;
}

// A one-round run of 4 clients in which client 3 was rejected once (`why`
// in the log) and left out of the sum.
void expect_client_3_rejected(const fixtures::DeployedRun& run, testing::LineLog& log,
                              const std::string& why) {
  ASSERT_EQ(run.result.state.round, 1) << log.all();
  EXPECT_EQ(run.stats.rejected_updates, 1) << log.all();
  EXPECT_EQ(log.count(why), 1u) << log.all();
  ASSERT_EQ(run.reports.size(), 1u);
  EXPECT_EQ(run.reports[0].participated, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(run.reports[0].dropped, (std::vector<int64_t>{3}));
}

TEST(FlSecAggDeploy, AMalformedAnswerIsRejectedNamingTheClientAndPhase) {
  SecAggJob s(4, 1, 30.0);
  s.tamper = [](int64_t client, int phase, std::vector<std::byte>& m) {
    if (client == 3 && phase == 1) m.resize(m.size() / 2);  // truncated shares
  };
  testing::LineLog log;
  // Out of the round after phase 1: its input is not in the sum.
  expect_client_3_rejected(fixtures::run_server(s, log, s.server_options()), log,
                           "rejected client 3, round 1, secagg phase 1 (share keys)");
}

// Regression: a plain update reached the aggregator (unused in a secure
// round) uncounted instead of being refused.
TEST(FlSecAggDeploy, APlainUpdateInASecureJobIsRejectedAndCounted) {
  SecAggJob s(4, 1, 3.0);
  s.plain_clients = {3};  // ignores the setup, trains the task, sends a plain update
  testing::LineLog log;
  expect_client_3_rejected(
      fixtures::run_server(s, log, s.server_options()), log,
      "rejected client 3, round 1: a plain update, but this job uses secure aggregation");
}

TEST(FlSecAggDeploy, DpWithoutSecureAggregationIsRefusedNotIgnored) {
  SecAggJob s(4, 1, 30.0);
  FlServerOptions o = s.server_options();
  o.config.secure_aggregation = false;
  o.config.dp_clip = 1.0;
  o.config.dp_noise_multiplier = 1.0;
  testing::LineLog log;
  EXPECT_THROW(FlServer(o, comm::JobAuth(kJob, kSecret), log.logger()), ConfigError);
  o.config.secure_aggregation = true;
  o.mean_samples = 0;  // the weights' n_bar is required
  EXPECT_THROW(FlServer(o, comm::JobAuth(kJob, kSecret), log.logger()), UsageError);
}

TEST(FlSecAggProtocol, TheNewKindsRoundTrip) {
  FlSecAggSetup setup;
  setup.round = 3;
  setup.session = 7;
  setup.index = 2;
  setup.clients = 5;
  setup.threshold = 3;
  setup.graph = 1;
  setup.degree = 4;
  setup.graph_seed = 0x1234567890ULL;
  setup.clip = 2.5F;
  setup.vector_length = 99;
  setup.min_survivors = 3;
  setup.mean_samples = 12.5;
  const std::vector<std::byte> bytes = encode_secagg_setup(setup);
  EXPECT_EQ(bytes.size(), 4u + 61u);
  const FlMessage m = decode_fl_message(bytes);
  ASSERT_EQ(m.kind, FlKind::kSecAggSetup);
  EXPECT_EQ(m.secagg_setup.session, 7u);
  EXPECT_EQ(m.secagg_setup.index, 2u);
  EXPECT_EQ(m.secagg_setup.graph_seed, 0x1234567890ULL);
  EXPECT_EQ(m.secagg_setup.clip, 2.5F);
  EXPECT_EQ(m.secagg_setup.vector_length, 99u);
  EXPECT_EQ(m.secagg_setup.mean_samples, 12.5);

  FlSecAggPayload answer;
  answer.client = 4;
  answer.round = 3;
  answer.session = 7;
  answer.phase = 2;
  answer.samples = 20;
  answer.loss = 0.5;
  answer.steps = 4;
  answer.message = {std::byte{1}, std::byte{2}, std::byte{3}};
  const FlMessage a = decode_fl_message(encode_secagg_answer(answer));
  ASSERT_EQ(a.kind, FlKind::kSecAggAnswer);
  EXPECT_EQ(a.secagg.client, 4);
  EXPECT_EQ(a.secagg.phase, 2);
  EXPECT_EQ(a.secagg.samples, 20);
  EXPECT_EQ(a.secagg.message, answer.message);

  answer.phase = 3;
  const FlMessage b = decode_fl_message(encode_secagg_broadcast(answer));
  ASSERT_EQ(b.kind, FlKind::kSecAggBroadcast);
  EXPECT_EQ(b.secagg.phase, 3);
  EXPECT_EQ(b.secagg.session, 7u);
  EXPECT_EQ(b.secagg.message, answer.message);
}

TEST(FlSecAggProtocol, MalformedSecAggPayloadsAreDataErrorsNamingTheField) {
  FlSecAggSetup setup;
  setup.round = 1;
  setup.clients = 3;
  setup.mean_samples = 1.0;
  setup.index = 3;  // not below clients
  EXPECT_THROW(
      {
        try {
          decode_fl_message(encode_secagg_setup(setup));
        } catch (const DataError& e) {
          EXPECT_NE(std::string(e.what()).find("secagg index"), std::string::npos) << e.what();
          throw;
        }
      },
      DataError);
  setup.index = 0;
  setup.graph = 2;
  EXPECT_THROW(decode_fl_message(encode_secagg_setup(setup)), DataError);
  setup.graph = 0;
  setup.clip = -1.0F;
  EXPECT_THROW(decode_fl_message(encode_secagg_setup(setup)), DataError);
  setup.clip = 1.0F;
  setup.mean_samples = 0.0;
  EXPECT_THROW(decode_fl_message(encode_secagg_setup(setup)), DataError);

  FlSecAggPayload p;
  p.round = 1;
  p.phase = 0;  // a broadcast opens phases 1..3
  EXPECT_THROW(decode_fl_message(encode_secagg_broadcast(p)), DataError);
  p.phase = 4;
  EXPECT_THROW(decode_fl_message(encode_secagg_answer(p)), DataError);
  p.phase = 1;
  p.message.assign(8, std::byte{0});
  std::vector<std::byte> bytes = encode_secagg_answer(p);
  bytes.pop_back();  // the count says 8, 7 are left
  EXPECT_THROW(decode_fl_message(bytes), DataError);
  bytes = encode_secagg_answer(p);
  bytes.push_back(std::byte{0});  // trailing
  EXPECT_THROW(decode_fl_message(bytes), DataError);
}

}  // namespace
}  // namespace dtrain::fl
