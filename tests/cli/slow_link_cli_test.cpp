// --slow-link RANK=FACTOR through the dtrain executable: malformed entries,
// a slow link without an emulated link to slow down, and a rank beyond the
// job exit with code 2 naming what is wrong; a job with one slow link runs
// to the end. What each worker's transport gets is tested in
// tests/train/job_file_test.cpp (JobFileLinks).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("slow-link")
                             .seed(3)
                             .synthetic(400, 16, 3)
                             .mlp({16})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .batch(50)
                             .toml();

std::vector<std::string> args(const testing::TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> a = {
      "train", dir.file("job.toml"), "--output", dir.file("out"), "--workers",
      "2",     "--progress",         "plain"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

TEST(SlowLinkCli, BadEntriesExitWithCode2NamingThem) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::vector<std::string> link = {"--set", "distributed.link_mbps=1000"};
  for (const char* bad : {"1", "x=2", "1=0.5", "all=2"}) {
    std::vector<std::string> extra = link;
    extra.insert(extra.end(), {"--slow-link", bad});
    const CliRun run = run_dtrain(args(dir, extra));
    EXPECT_EQ(run.status.code, 2) << bad << ": " << run.output;
    EXPECT_NE(run.output.find(std::string("'") + bad + "'"), std::string::npos) << run.output;
  }
  std::vector<std::string> beyond = link;
  beyond.insert(beyond.end(), {"--slow-link", "5=10"});
  const CliRun far = run_dtrain(args(dir, beyond));
  EXPECT_EQ(far.status.code, 2) << far.output;
  EXPECT_NE(far.output.find("'5=10' names rank 5, but the job has 2 workers"), std::string::npos)
      << far.output;
}

TEST(SlowLinkCli, NeedsAnEmulatedLink) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run = run_dtrain(args(dir, {"--slow-link", "1=10"}));
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_NE(run.output.find("'distributed.slow_link': needs distributed.link_mbps"),
            std::string::npos)
      << run.output;
}

TEST(SlowLinkCli, AJobWithOneSlowLinkRunsToTheEnd) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run =
      run_dtrain(args(dir, {"--set", "distributed.link_mbps=1000", "--set",
                            "distributed.link_latency_ms=0.1", "--slow-link", "1=10"}));
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  EXPECT_NE(run.output.find("test accuracy"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace dtrain
