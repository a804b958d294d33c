// `dtrain fl` and `dtrain partition --kind shards` through the dtrain
// executable: flags override the [fl] keys (bad values exit 2 naming the
// key), the run writes what `dtrain eval` reads, a second run resumes.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "cli/fl_command.h"
#include "cli_test_util.h"
#include "core/log.h"
#include "io/output_lock.h"
#include "testing/fault_fs.h"

namespace dtrain::testing {
namespace {

constexpr const char* kFlJob = R"([job]
name = "fl-cli"
seed = 5
[data]
dataset = "synthetic"
synthetic_samples = 400
synthetic_classes = 4
partition = "shards"
[model]
input_shape = [16]
[[model.layers]]
type = "linear"
out_features = 4
[optimizer]
type = "sgd"
lr = 0.1
[fl]
clients = 20
rounds = 50
)";

int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(FlCli, FlagsOverrideTheJobAndTheWeightsEvaluate) {
  TempDir dir;
  write_file(dir.file("job.toml"), kFlJob);
  const std::string out = dir.file("out");
  CliRun run = run_dtrain({"fl", dir.file("job.toml"), "--clients", "8", "--fraction", "0.5",
                           "--rounds", "2", "--threads", "2", "--output", out});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("fl-cli: fedavg 8 clients, 4 per round, 2 rounds"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("round 2/2: 4 clients"), std::string::npos) << run.output;
  std::ifstream metrics(out + "/metrics.jsonl");
  const std::string text((std::istreambuf_iterator<char>(metrics)), {});
  EXPECT_EQ(count_of(text, "\"event\":\"round\""), 2) << text;

  run = run_dtrain({"eval", dir.file("job.toml"), "--weights", out + "/model.safetensors"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("test samples: accuracy "), std::string::npos) << run.output;

  // The same output again with more rounds: resumed after round 2.
  run = run_dtrain({"fl", dir.file("job.toml"), "--clients", "8", "--fraction", "0.5", "--rounds",
                    "3", "--output", out, "--progress", "none"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_EQ(run.output.find("round 3/3"), std::string::npos) << run.output;
  std::ifstream again(out + "/metrics.jsonl");
  const std::string more((std::istreambuf_iterator<char>(again)), {});
  EXPECT_EQ(count_of(more, "\"event\":\"round\""), 3) << more;
  EXPECT_EQ(count_of(more, "\"start_round\":2"), 1) << more;
}

TEST(FlCli, BadFlagValuesExitTwoNamingTheKey) {
  TempDir dir;
  write_file(dir.file("job.toml"), kFlJob);
  for (const auto& [flag, value, key] :
       {std::tuple{"--clients", "0", "'fl.clients'"},
        std::tuple{"--fraction", "0", "'fl.fraction'"}, std::tuple{"--rounds", "-1", "'fl.rounds'"},
        std::tuple{"--set", "fl.nope=1", "'fl.nope'"}}) {
    const CliRun run =
        run_dtrain({"fl", dir.file("job.toml"), flag, value, "--output", dir.file("out")});
    EXPECT_TRUE(run.status.exited && run.status.code == 2) << flag << ": " << run.output;
    EXPECT_NE(run.output.find(key), std::string::npos) << flag << ": " << run.output;
  }
}

TEST(FlCli, AnOutputFolderInUseIsRefused) {
  TempDir dir;
  write_file(dir.file("job.toml"), kFlJob);
  Logger quiet(LogLevel::kOff, [](LogLevel, std::string_view) {});
  const io::OutputLock held = io::OutputLock::acquire(
      dir.file("out"), io::this_process_record("fl_cli_test", std::chrono::system_clock::now()),
      quiet);
  const CliRun run =
      run_dtrain({"fl", dir.file("job.toml"), "--rounds", "1", "--output", dir.file("out")});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.output;
  EXPECT_NE(run.output.find("is in use by another dtrain run"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/metrics.jsonl")));
}

TEST(FlCli, FlagsBecomeOverridesOfTheirKeys) {
  cli::FlCommandOptions options;
  options.overrides = {"fl.local_epochs=5"};
  options.clients = 100;
  options.fraction = 0.1;
  options.rounds = 20;
  options.threads = 4;
  EXPECT_EQ(cli::fl_overrides(options),
            (std::vector<std::string>{"fl.local_epochs=5", "fl.clients=100", "fl.fraction=0.1",
                                      "fl.rounds=20", "fl.threads=4"}));
}

TEST(FlCli, PartitionShowsTheShardsSplit) {
  TempDir dir;
  write_file(dir.file("job.toml"), kFlJob);
  const CliRun run = run_dtrain({"partition", dir.file("job.toml"), "--kind", "shards", "--workers",
                                 "4", "--shards-per-worker", "2"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("in 4 parts (shards):\n"), std::string::npos) << run.output;
  const CliRun bad = run_dtrain(
      {"partition", dir.file("job.toml"), "--kind", "shards", "--shards-per-worker", "0"});
  EXPECT_TRUE(bad.status.exited && bad.status.code == 2) << bad.output;
  EXPECT_NE(bad.output.find("shards_per_worker must be >= 1, got 0"), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace dtrain::testing
