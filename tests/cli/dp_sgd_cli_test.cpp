// DP-SGD through the dtrain executable: `--workers 2 --strategy allreduce`
// with [privacy] runs two real processes on loopback, finishes and reports
// epsilon; ps is refused before any process starts.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 300 samples (240 train), batch 24: q = 0.1, 10 steps an epoch.
const std::string kDpJob = testing::TestJob()
                               .name("dp-blobs")
                               .seed(3)
                               .synthetic(300, 8, 3)
                               .mlp({16})
                               .optimizer("sgd", 0.5)
                               .epochs(2)
                               .batch(24)
                               .toml() +
                           "\n[privacy]\nenabled = true\nnoise_multiplier = 1.0\n"
                           "max_grad_norm = 1.0\ndelta = 1e-5\n";

TEST(DpSgdCli, TwoAllReduceWorkersFinishAndReportEpsilon) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kDpJob);
  const std::string out = dir.file("out");
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", out, "--workers", "2",
                           "--strategy", "allreduce", "--progress", "plain"});
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  EXPECT_NE(run.output.find("strategy allreduce with 2 workers"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("2 workers, each adding noise of stddev 0.707107"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("epoch 2 done"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("| epsilon "), std::string::npos) << run.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
}

TEST(DpSgdCli, ParameterServersAreRefusedNamingTheKey) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kDpJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers",
                           "2", "--strategy", "ps"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("privacy.enabled"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("not 'ps'"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace dtrain
