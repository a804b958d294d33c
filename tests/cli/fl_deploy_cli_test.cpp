// The deployed federated mode with real processes on loopback (the dtrain
// executable): `dtrain fl JOB --processes` with clients SIGKILLed mid-round
// (their rounds close at the deadline without them and the run completes), a
// SIGKILLed server restarted by the launcher resuming after its last round,
// and `dtrain fl-server` / `dtrain fl-client` by hand, where a client with
// another job secret is refused and counted. The kills come from the test
// hook DTRAIN_TEST_KILL_AT_ROUND (cli/fl_deploy_command.h). Nothing here
// compares timings.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "testing/fault_fs.h"

namespace dtrain::testing {
namespace {

// A tiny synthetic job: 4 clients, all sampled each round, rounds of at
// most 2 s, at least 2 updates per round.
constexpr const char* kJob = R"([job]
name = "fl-deploy-cli"
seed = 3
[data]
dataset = "synthetic"
synthetic_samples = 200
synthetic_features = 8
synthetic_classes = 3
[model]
input_shape = [8]
[[model.layers]]
type = "linear"
out_features = 3
[optimizer]
type = "sgd"
lr = 0.1
[fl]
clients = 4
fraction = 1.0
rounds = 4
local_batch = 10
min_fit_clients = 2
round_timeout_s = 2.0
)";

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The model of `dtrain fl JOB` (the simulation) in `dir`/sim.
std::string simulated_model(TempDir& dir) {
  const CliRun sim = run_dtrain({"fl", dir.file("job.toml"), "--output", dir.file("sim")});
  EXPECT_TRUE(sim.status.ok()) << sim.output;
  return read_text(dir.file("sim") + "/model.safetensors");
}

TEST(FlDeployCli, AFaultFreeRunWithProcessesWritesTheSimulationsModel) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string out = dir.file("out");
  const CliRun run = run_dtrain({"fl", dir.file("job.toml"), "--processes", "--output", out});
  ASSERT_TRUE(run.status.ok()) << run.output;
  const std::string model = read_text(out + "/model.safetensors");
  EXPECT_FALSE(model.empty());
  // Same sampling, the same per-client RNG streams, aggregation in client-id
  // order: the same bytes.
  EXPECT_TRUE(model == simulated_model(dir));
}

TEST(FlDeployCli, WithoutAJobSecretTheServerRefusesToStart) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run = run_dtrain({"fl-server", dir.file("job.toml"), "--output", dir.file("out")},
                                {{"DTRAIN_JOB_SECRET", ""}});
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_NE(run.output.find("DTRAIN_JOB_SECRET is not set"), std::string::npos) << run.output;
}

TEST(FlDeployCli, ClientsKilledMidRoundAreDroppedAtTheDeadlineAndTheRunCompletes) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string out = dir.file("out");
  // Clients 1 and 2 (slots 2 and 3) SIGKILL themselves on round 2's task.
  const CliRun run = run_dtrain(
      {"fl", dir.file("job.toml"), "--processes", "--max-restarts", "0", "--output", out},
      {{"DTRAIN_TEST_KILL_AT_ROUND", "2:2,3:2"}});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("fl client 1 (pid"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("round 1 closed: participated [0, 1, 2, 3], dropped []"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("round 2 closed: participated [0, 3], dropped [1, 2]"),
            std::string::npos)
      << run.output;
  const std::string metrics = read_text(out + "/metrics.jsonl");
  EXPECT_EQ(count_of(metrics, "\"event\":\"round\""), 4) << metrics;
  EXPECT_EQ(count_of(metrics, "\"event\":\"end\""), 1) << metrics;
  EXPECT_NE(metrics.find("\"dropped\":2,"), std::string::npos) << metrics;
  EXPECT_TRUE(std::ifstream(out + "/model.safetensors").good());
}

TEST(FlDeployCli, WithSecureAggregationAClientKilledMidRoundIsADropoutAndTheRunCompletes) {
  TempDir dir;
  // Threshold: a majority of the 4 holders (3); after the kill, 3 of 3.
  write_file(dir.file("job.toml"),
             std::string(kJob) + "secure_aggregation = true\nsecagg_clip = 10.0\n");
  const std::string out = dir.file("out");
  // Client 1 (slot 2) SIGKILLs itself on round 2's task: it never advertises keys.
  const CliRun run = run_dtrain(
      {"fl", dir.file("job.toml"), "--processes", "--max-restarts", "0", "--output", out},
      {{"DTRAIN_TEST_KILL_AT_ROUND", "2:2"}});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("rounds, secure aggregation)"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("round 1 closed: participated [0, 1, 2, 3], dropped []"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("secagg phase 0 (advertise keys): no answer by its deadline from [1]"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("round 2 closed: participated [0, 2, 3], dropped [1]"),
            std::string::npos)
      << run.output;
  EXPECT_EQ(count_of(run.output, "fl server: rejected"), 0) << run.output;
  const std::string metrics = read_text(out + "/metrics.jsonl");
  EXPECT_EQ(count_of(metrics, "\"event\":\"round\""), 4) << metrics;
  EXPECT_EQ(count_of(metrics, "\"event\":\"end\""), 1) << metrics;
  EXPECT_TRUE(std::ifstream(out + "/model.safetensors").good());
}

TEST(FlDeployCli, AKilledServerIsRestartedAndResumesAfterItsLastRound) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string out = dir.file("out");
  // The server (slot 0) SIGKILLs itself once round 2 is checkpointed.
  const CliRun run = run_dtrain(
      {"fl", dir.file("job.toml"), "--processes", "--max-restarts", "1", "--output", out},
      {{"DTRAIN_TEST_KILL_AT_ROUND", "0:2"}});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("fl server (pid"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("fl server: resuming after round 2"), std::string::npos) << run.output;
  const std::string metrics = read_text(out + "/metrics.jsonl");
  EXPECT_EQ(count_of(metrics, "\"event\":\"begin\""), 2) << metrics;
  EXPECT_EQ(count_of(metrics, "\"start_round\":2"), 1) << metrics;
  for (int round = 1; round <= 4; ++round) {
    EXPECT_EQ(count_of(metrics, "\"round\":" + std::to_string(round) + ","), 1)
        << "round " << round << "\n"
        << metrics;
  }
  // The resumed server continued exactly: the final model is the
  // fault-free one.
  EXPECT_TRUE(read_text(out + "/model.safetensors") == simulated_model(dir));
}

// The "epsilon" figures of metrics.jsonl's round events, in file order.
std::vector<std::string> epsilons(const std::string& metrics) {
  std::vector<std::string> found;
  const std::string key = "\"epsilon\":";
  for (auto at = metrics.find(key); at != std::string::npos; at = metrics.find(key, at + 1)) {
    const auto begin = at + key.size();
    found.push_back(metrics.substr(begin, metrics.find_first_of(",}", begin) - begin));
  }
  return found;
}

TEST(FlDeployCli, ADpServerKilledAndRestartedContinuesEpsilonAndStopsAtTheBudget) {
  TempDir dir;
  // DP-FedAvg with secure aggregation, m = 3 of K = 4 a round (q = 3 / 4).
  std::string job = std::string(kJob) +
                    "secure_aggregation = true\nsecagg_clip = 10.0\ndp_clip = 0.5\n"
                    "dp_noise_multiplier = 1.0\n";
  job.replace(job.find("fraction = 1.0"), 14, "fraction = 0.75");
  // Room on a loaded machine: a client that missed a deadline would leave
  // the next round's pool, and q would rise above 3 / 4.
  job.replace(job.find("round_timeout_s = 2.0"), 21, "round_timeout_s = 20.0");
  write_file(dir.file("job.toml"), job);
  // The simulation's epsilon after each of the 4 rounds.
  const CliRun sim = run_dtrain({"fl", dir.file("job.toml"), "--output", dir.file("sim")});
  ASSERT_TRUE(sim.status.ok()) << sim.output;
  const std::vector<std::string> simulated = epsilons(read_text(dir.file("sim/metrics.jsonl")));
  ASSERT_EQ(simulated.size(), 4u) << sim.output;
  // A budget between rounds 3 and 4.
  const double target = (std::stod(simulated[2]) + std::stod(simulated[3])) / 2;
  write_file(dir.file("job.toml"), job + "dp_target_epsilon = " + std::to_string(target) + "\n");
  // The server (slot 0) SIGKILLs itself once round 2 is checkpointed.
  const std::string out = dir.file("out");
  const CliRun run = run_dtrain(
      {"fl", dir.file("job.toml"), "--processes", "--max-restarts", "1", "--output", out},
      {{"DTRAIN_TEST_KILL_AT_ROUND", "0:2"}});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("fl server: resuming after round 2"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("privacy budget: stopped before round 4"), std::string::npos)
      << run.output;
  const std::string metrics = read_text(out + "/metrics.jsonl");
  // Rounds 1-2 by the first server, 3 by the restarted one: the same epsilon
  // as the simulation's rounds 1-3 (not restarted from zero).
  EXPECT_EQ(epsilons(metrics), (std::vector<std::string>{simulated[0], simulated[1], simulated[2]}))
      << metrics;
  EXPECT_EQ(count_of(metrics, "\"event\":\"privacy_stop\""), 1) << metrics;
  EXPECT_EQ(count_of(metrics, "\"event\":\"end\""), 1) << metrics;
  EXPECT_TRUE(std::ifstream(out + "/model.safetensors").good());
}

TEST(FlDeployCli, AClientWithAnotherSecretIsRefusedAndCounted) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::vector<std::string> sh = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY};
  auto args = [&](std::vector<std::string> rest) {
    std::vector<std::string> all = sh;
    all.insert(all.end(), rest.begin(), rest.end());
    return all;
  };
  ChildProcess server = ChildProcess::spawn(
      args({"fl-server", dir.file("job.toml"), "--output", dir.file("out"), "--server",
            "tcp://127.0.0.1:0", "--set", "fl.clients=2", "--set", "fl.fraction=0.5", "--set",
            "fl.min_fit_clients=1", "--set", "fl.rounds=2"}),
      {{"DTRAIN_JOB_SECRET", "right"}, {"OPENBLAS_NUM_THREADS", "1"}});
  const Deadline deadline = Deadline::after(std::chrono::seconds(120));
  // The address the server printed: "listening on tcp://127.0.0.1:PORT ".
  const std::string marker = "listening on tcp://127.0.0.1:";
  auto printed = [&]() -> std::string {
    const size_t at = server.output().find(marker);
    if (at == std::string::npos) return {};
    const size_t end = server.output().find(' ', at + marker.size());
    if (end == std::string::npos) return {};
    return server.output().substr(at + 13, end - at - 13);  // from "tcp://"
  };
  while (printed().empty() && !deadline.expired()) {
    ASSERT_TRUE(server.read_some(1000)) << server.output();
  }
  const std::string endpoint = printed();
  ASSERT_FALSE(endpoint.empty()) << server.output();
  ChildProcess stranger =
      ChildProcess::spawn(args({"fl-client", dir.file("job.toml"), "--client-id", "1", "--server",
                                endpoint, "--server-timeout", "3", "--set", "fl.clients=2"}),
                          {{"DTRAIN_JOB_SECRET", "wrong"}, {"OPENBLAS_NUM_THREADS", "1"}});
  const std::optional<ExitStatus> refused = stranger.wait(deadline);
  ASSERT_TRUE(refused.has_value()) << stranger.output();
  EXPECT_EQ(refused->code, 4) << stranger.output();
  EXPECT_NE(stranger.output().find("the fl server at " + endpoint), std::string::npos)
      << stranger.output();
  const CliRun good = run_dtrain({"fl-client", dir.file("job.toml"), "--client-id", "0", "--server",
                                  endpoint, "--set", "fl.clients=2"},
                                 {{"DTRAIN_JOB_SECRET", "right"}});
  EXPECT_TRUE(good.status.ok()) << good.output;
  const std::optional<ExitStatus> served = server.wait(deadline);
  ASSERT_TRUE(served.has_value() && served->ok()) << server.output();
  EXPECT_NE(server.output().find("fl server: dropped an inbound frame"), std::string::npos)
      << server.output();
  EXPECT_NE(server.output().find("frame(s) dropped"), std::string::npos) << server.output();
  EXPECT_EQ(server.output().find("client 1 joined"), std::string::npos) << server.output();
}

}  // namespace
}  // namespace dtrain::testing
