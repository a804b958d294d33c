// Compression through the dtrain executable (docs/compression.md): real
// worker processes, real checkpoints. A compressed run stopped and resumed
// ends with the weights of an uninterrupted one, bit for bit, because every
// rank gets its own residuals back; the progress lines carry the bytes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 1200 samples, batch 50: 24 updates an epoch, 48 in all; top-k keeps 10%
// of every tensor, biases included, with error feedback.
const std::string kTopkJob = testing::TestJob()
                                 .name("topk")
                                 .seed(9)
                                 .synthetic(1200, 10, 3)
                                 .mlp({32})
                                 .optimizer("sgd", 0.1)
                                 .epochs(2)
                                 .batch(50)
                                 .set("train.log_every_steps", "8")
                                 .set("train.checkpoint_every_steps", "10")
                                 .set("compression.type", "\"topk\"")
                                 .set("compression.density", "0.1")
                                 .set("compression.min_size", "0")
                                 .set("compression.start_step", "3")
                                 .toml();

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(CompressionCli, AResumedRunEndsWithTheUninterruptedRunsWeightsBitForBit) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kTopkJob);
  const auto train = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> args{"train", dir.file("job.toml"), "--output", out, "--workers",
                                  "2",     "--progress",         "plain"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_dtrain(args);
  };
  const CliRun whole = train(dir.file("whole"), {});
  ASSERT_TRUE(whole.status.ok()) << whole.output;
  // The progress lines carry the bytes per update and the ratio.
  EXPECT_NE(whole.output.find("KB/step (x"), std::string::npos) << whole.output;

  // Stop after update 30 (a checkpoint every 10 updates), then resume.
  const CliRun first = train(dir.file("resumed"), {"--set", "train.max_steps=30"});
  ASSERT_TRUE(first.status.ok()) << first.output;
  EXPECT_TRUE(std::filesystem::exists(dir.file("resumed/rank-1/ckpt-30.dtc"))) << first.output;
  const CliRun rest = train(dir.file("resumed"), {});
  ASSERT_TRUE(rest.status.ok()) << rest.output;
  EXPECT_NE(rest.output.find("at step 30"), std::string::npos) << rest.output;
  EXPECT_EQ(rest.output.find("start afresh"), std::string::npos) << rest.output;
  EXPECT_EQ(file_bytes(dir.file("whole/model.safetensors")),
            file_bytes(dir.file("resumed/model.safetensors")));

  // Without rank 1's own state the resumed run says so and ends elsewhere:
  // the residuals matter.
  const CliRun again = train(dir.file("lost"), {"--set", "train.max_steps=30"});
  ASSERT_TRUE(again.status.ok()) << again.output;
  std::filesystem::remove_all(dir.file("lost/rank-1"));
  const CliRun lost = train(dir.file("lost"), {});
  ASSERT_TRUE(lost.status.ok()) << lost.output;
  EXPECT_NE(lost.output.find("rank 1: the checkpoint holds no compressor state for this rank"),
            std::string::npos)
      << lost.output;
  EXPECT_NE(file_bytes(dir.file("whole/model.safetensors")),
            file_bytes(dir.file("lost/model.safetensors")));
}

// QSGD with one level and one norm per tensor (each entry 0 or +-||g||:
// unbiased, but its variance grows with the square root of the tensor's
// size) blows the MNIST MLP up
// within the first epoch. Unguarded the run stops at the non-finite
// gradient; guarded it is rescued (more levels, from the last good weights)
// and learns.
TEST(CompressionCli, TheGuardRescuesARunMadeToDivergeAndItLearns) {
  const std::string mnist = std::string(DTRAIN_SOURCE_DIR) + "/data/mnist";
  if (!std::filesystem::exists(mnist + "/train-images-idx3-ubyte")) {
    GTEST_SKIP() << "MNIST not fetched (scripts/fetch_mnist.sh)";
  }
  testing::TempDir dir;
  const auto train = [&](const std::string& out, const std::string& guard) {
    return run_dtrain({"train",      std::string(DTRAIN_SOURCE_DIR) + "/examples/mnist_mlp.toml",
                       "--output",   out,
                       "--workers",  "2",
                       "--progress", "plain",
                       "--set",      "data.path=\"" + mnist + "\"",
                       "--set",      "data.train_limit=12000",
                       "--set",      "data.test_limit=2000",
                       "--set",      "train.epochs=3",
                       "--set",      "compression.type=\"qsgd\"",
                       "--set",      "compression.levels=1",
                       "--set",      "compression.qsgd_bucket=0",
                       "--set",      "compression.guard=" + guard,
                       "--set",      "compression.guard_hold_steps=1000"});
  };
  const CliRun unguarded = train(dir.file("unguarded"), "false");
  EXPECT_FALSE(unguarded.status.ok()) << unguarded.output;
  EXPECT_NE(unguarded.output.find("is not finite"), std::string::npos) << unguarded.output;

  const CliRun guarded = train(dir.file("guarded"), "true");
  ASSERT_TRUE(guarded.status.ok()) << guarded.output;
  EXPECT_NE(guarded.output.find("convergence guard: "), std::string::npos) << guarded.output;
  EXPECT_NE(guarded.output.find("continue with qsgd 4 levels"), std::string::npos)
      << guarded.output;
  std::ifstream metrics(dir.file("guarded/metrics.jsonl"));
  int rescues = 0;
  double accuracy = 0.0;
  for (std::string line; std::getline(metrics, line);) {
    if (line.find("\"event\":\"guard\"") != std::string::npos) ++rescues;
    if (const size_t at = line.find("\"test_accuracy\":"); at != std::string::npos) {
      accuracy = std::stod(line.substr(at + 16));
    }
  }
  EXPECT_GE(rescues, 1);
  EXPECT_GT(accuracy, 0.8);
}

TEST(CompressionCli, ACompressorOnOneProcessIsAConfigErrorNamingTheKey) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kTopkJob);
  const CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out")});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe() << run.output;
  EXPECT_NE(run.output.find("compression.type"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace dtrain
