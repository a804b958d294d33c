// Heterogeneous workers through the dtrain executable: with one of three
// real worker processes modelled slower (DTRAIN_TEST_COMPUTE_SECONDS: the
// compute times the balancer sees are fixed, whatever the machine's load)
// and dynamic batch sizing, the slowed worker ends with the smallest share,
// under the allreduce and the ps strategy (which refuses it outside sync);
// partitioned training with unequal part sizes finishes; the new job-file
// keys are read and checked.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "cli_test_util.h"
#include "core/deadline.h"
#include "core/error.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"
#include "train/job_file.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("hetero")
                             .seed(3)
                             .synthetic(1500, 64, 4)
                             .mlp({256})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .batch(120)
                             .set("train.log_every_steps", "5")
                             .set("distributed.dynamic_batch", "true")
                             .set("distributed.rebalance_every", "2")
                             .set("distributed.smoothing", "0.8")
                             .set("distributed.min_share", "0.02")
                             .toml();

// The rows per worker rank 0 reported for the last batch of the epoch.
std::vector<int64_t> reported_split(const std::string& output) {
  const std::string marker = "rows per worker in the last batch: ";
  const size_t at = output.find(marker);
  if (at == std::string::npos) return {};
  const size_t end = output.find('\n', at);
  std::istringstream fields(output.substr(at + marker.size(), end - at - marker.size()));
  std::vector<int64_t> rows;
  for (int64_t v = 0; fields >> v;) rows.push_back(v);
  return rows;
}

// Every worker's step costs 1 ms plus 0.1 ms per row, worker 1's 1 ms plus
// 0.4 ms per row: equal step times give worker 1 a quarter of each other
// worker's rows, about 13 of 120 against 53, far from the 3-row floor
// (min_share 0.02). A ModelledTimer replaces the measured time for the
// balancer only (no sleep), so the split follows from these times on a
// machine of any load.
const std::map<std::string, std::string> kWorkerOneSlower = {
    {"DTRAIN_TEST_COMPUTE_SECONDS", "all:0.001:0.0001,1:0.001:0.0004"}};

// The split of a batch among workers 0 and 2 (modelled alike) and worker 1
// (modelled slower): 1 has fewer rows than either, 0 and 2 differ by at most
// the one row left over.
void expect_worker_one_smallest(const std::vector<int64_t>& rows, const std::string& output) {
  ASSERT_EQ(rows.size(), 3u) << output;
  EXPECT_EQ(rows[0] + rows[1] + rows[2], 120);
  EXPECT_LT(rows[1], rows[0]) << output;
  EXPECT_LT(rows[1], rows[2]) << output;
  EXPECT_LE(std::abs(rows[0] - rows[2]), 1) << output;
}

TEST(DynamicBatchCli, TheSlowedWorkerEndsWithTheSmallestShare) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers",
                           "3", "--progress", "plain"},
                          kWorkerOneSlower);
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  expect_worker_one_smallest(reported_split(run.output), run.output);
}

TEST(DynamicBatchCli, WithTheParameterServerTheSlowedWorkerEndsWithTheSmallestShare) {
  // The same under the ps strategy in sync (1 server, 3 worker processes):
  // the servers hand every worker's compute time back with the pull, so
  // every worker re-balances alike. Class weights ride along (the loss is
  // additive over workers, so the servers' weighted mean keeps it exact).
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun run = run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("out"), "--strategy", "ps", "--servers",
       "1", "--workers", "3", "--set", "train.class_weights=\"balanced\"", "--progress", "plain"},
      kWorkerOneSlower);
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  expect_worker_one_smallest(reported_split(run.output), run.output);
}

TEST(DynamicBatchCli, WithTheParameterServerOnlySyncWithoutBackupWorkersBalances) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--set", "distributed.consistency=\"ssp\""},
       "dynamic batch sizing with the ps strategy needs consistency 'sync', not 'ssp'"},
      {{"--set", "distributed.backup_workers=1"},
       "dynamic batch sizing needs every worker in every version; with backup_workers = 1"},
      {{"--slowdown", "5=2"}, "names rank 5, but the job has 3 workers"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {
        "train", dir.file("job.toml"), "--output", dir.file("out"), "--strategy",
        "ps",    "--servers",          "1",        "--workers",     "3"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CliRun run = run_dtrain(args);
    EXPECT_EQ(run.status.code, 2) << run.status.describe() << "\n" << run.output;
    EXPECT_NE(run.output.find(c.message), std::string::npos) << run.output;
  }
}

TEST(DynamicBatchCli, PartitionsOfUnequalSizeTrainToTheEnd) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun run =
      run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers", "2",
                  "--set", "data.partition=\"quantity\"", "--set", "data.quantity_sigma=1.5",
                  "--set", "train.class_weights=\"balanced\"", "--progress", "plain"});
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  EXPECT_NE(run.output.find("test accuracy"), std::string::npos) << run.output;
}

TEST(DynamicBatchCli, BadSlowdownsExitWithCode2) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const char* bad : {"1", "x=2", "1=0.5"}) {
    CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                             "--workers", "2", "--slowdown", bad});
    EXPECT_EQ(run.status.code, 2) << bad << ": " << run.output;
    EXPECT_NE(run.output.find(bad), std::string::npos) << run.output;
  }
  CliRun beyond = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                              "--workers", "2", "--slowdown", "5=2"});
  EXPECT_FALSE(beyond.status.ok());
  EXPECT_NE(beyond.output.find("names rank 5, but the job has 2 workers"), std::string::npos)
      << beyond.output;
}

TEST(DynamicBatchCli, ElasticModeRefusesWhatItCannotReform) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  struct Case {
    std::vector<std::string> args;
    std::string key;
  };
  const std::vector<Case> cases = {
      {{}, "'distributed.dynamic_batch'"},  // the job file turns it on
      {{"--set", "distributed.dynamic_batch=false", "--slowdown", "1=2"}, "'distributed.slowdown'"},
      {{"--set", "distributed.dynamic_batch=false", "--set", "train.class_weights=\"balanced\""},
       "'train.class_weights'"},
      {{"--set", "distributed.dynamic_batch=false", "--set", "data.partition=\"iid\""},
       "'data.partition'"},
      {{"--set", "distributed.dynamic_batch=false", "--strategy", "ps"}, "'distributed.strategy'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {
        "train", dir.file("job.toml"), "--output", dir.file("out"), "--workers", "2", "--elastic"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CliRun run = run_dtrain(args);
    EXPECT_EQ(run.status.code, 2) << run.status.describe() << "\n" << run.output;
    EXPECT_NE(run.output.find(c.key + ": elastic mode (train.elastic) does not support"),
              std::string::npos)
        << run.output;
  }
}

TEST(DynamicBatchJobFile, ReadsAndChecksTheNewKeys) {
  const train::JobConfig job =
      train::parse_job(kJob, "job.toml",
                       {"distributed.slowdown=[\"2=3.5\"]", "data.partition=\"dirichlet\"",
                        "data.dirichlet_alpha=0.1", "train.class_weights=\"balanced\""})
          .job;
  EXPECT_TRUE(job.distributed.dynamic_batch);
  EXPECT_EQ(job.distributed.rebalance_every, 2);
  EXPECT_DOUBLE_EQ(job.distributed.smoothing, 0.8);
  EXPECT_DOUBLE_EQ(job.distributed.min_share, 0.02);
  EXPECT_EQ(job.distributed.slowdown, (std::vector<std::string>{"2=3.5"}));
  EXPECT_EQ(job.data.partition, "dirichlet");
  EXPECT_DOUBLE_EQ(job.data.dirichlet_alpha, 0.1);
  EXPECT_EQ(job.train.class_weights, "balanced");
  const train::Slowdown s = train::parse_slowdown("2=3.5", "x", "k");
  EXPECT_EQ(s.rank, 2);
  EXPECT_DOUBLE_EQ(s.factor, 3.5);
  const train::Slowdown all = train::parse_slowdown("all=4", "x", "k");
  EXPECT_EQ(all.rank, train::Slowdown::kAllRanks);
  EXPECT_DOUBLE_EQ(all.factor, 4.0);
  for (const char* bad : {"-1=2", "all=0.5", "every=2", "all"}) {
    EXPECT_THROW(train::parse_slowdown(bad, "x", "k"), ConfigError) << bad;
  }
  for (const char* bad : {"distributed.smoothing=1.0", "distributed.rebalance_every=0",
                          "distributed.min_share=1.5", "distributed.slowdown=[\"a=b\"]",
                          "data.partition=\"skewed\"", "train.class_weights=\"inverse\""}) {
    EXPECT_THROW(train::parse_job(kJob, "job.toml", {bad}), ConfigError) << bad;
  }
}

}  // namespace
}  // namespace dtrain
