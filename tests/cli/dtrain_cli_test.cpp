// Runs the dtrain executable as a user would: real processes, real files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/deadline.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

struct CliRun {
  testing::ExitStatus status;
  std::string output;
};

CliRun run_dtrain(std::vector<std::string> args) {
  // Through sh so that stderr (where errors go) is captured with stdout.
  args.insert(args.begin(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY});
  testing::ChildProcess child = testing::ChildProcess::spawn(args, {{"OPENBLAS_NUM_THREADS", "1"}});
  std::optional<testing::ExitStatus> status = child.wait(Deadline::after(std::chrono::seconds(240)));
  EXPECT_TRUE(status.has_value()) << "dtrain did not finish: " << child.output();
  return {status.value_or(testing::ExitStatus{}), child.output()};
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

const char* kBlobsJob = R"(
[job]
name = "blobs"
seed = 5

[data]
dataset = "synthetic"
synthetic_samples = 1200
synthetic_features = 10
synthetic_classes = 3

[model]
input_shape = [10]

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 32

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
name = "fc2"
out_features = 3

[optimizer]
type = "adam"
lr = 0.01

[train]
epochs = 3
batch_size = 50
log_every_steps = 10
)";

TEST(DtrainCli, TrainsEvaluatesAndResumes) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  const std::string out = dir.file("out");
  CliRun train = run_dtrain({"train", dir.file("job.toml"), "--output", out, "--progress", "plain"});
  ASSERT_TRUE(train.status.ok()) << train.status.describe() << "\n" << train.output;
  EXPECT_NE(train.output.find("epoch 3 done"), std::string::npos) << train.output;
  EXPECT_NE(train.output.find("done: 3 epochs, 60 steps"), std::string::npos) << train.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(out + "/metrics.jsonl"));
  EXPECT_TRUE(std::filesystem::exists(out + "/ckpt-60.dtc"));

  CliRun eval = run_dtrain({"eval", dir.file("job.toml"), "--weights", out + "/model.safetensors"});
  ASSERT_TRUE(eval.status.ok()) << eval.output;
  EXPECT_NE(eval.output.find("240 test samples: accuracy"), std::string::npos) << eval.output;

  // Two more epochs resume from the checkpoint of step 60.
  CliRun more = run_dtrain({"train", dir.file("job.toml"), "--output", out, "--set", "train.epochs=5"});
  ASSERT_TRUE(more.status.ok()) << more.output;
  EXPECT_NE(more.output.find("resumed from " + out + "/ckpt-60.dtc at step 60: epoch 4"),
            std::string::npos)
      << more.output;
  EXPECT_NE(more.output.find("done: 5 epochs, 100 steps"), std::string::npos) << more.output;
}

TEST(DtrainCli, MirroredWorkers) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers", "3"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("strategy mirrored with 3 workers"), std::string::npos) << run.output;
}

TEST(DtrainCli, BadJobFilesExitWithCode2AndNameTheLine) {
  testing::TempDir dir;
  std::string job = kBlobsJob;
  job.replace(job.find("out_features = 3\n"), 16, "out_featurs = 3");
  write_file(dir.file("job.toml"), job);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out")});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("job.toml:26: 'model.layers[2].out_featurs': unknown key"), std::string::npos)
      << run.output;

  write_file(dir.file("job2.toml"), kBlobsJob);
  run = run_dtrain({"train", dir.file("job2.toml"), "--set", "model.layers.2.in_features=31"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("linear 'fc2': input (1, 32) does not match in_features 31"),
            std::string::npos)
      << run.output;
}

TEST(DtrainCli, CorruptWeightsExitWithCode3) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  write_file(dir.file("bad.safetensors"), std::string("\x0a\0\0\0\0\0\0\0{not json}", 18));
  CliRun run = run_dtrain({"eval", dir.file("job.toml"), "--weights", dir.file("bad.safetensors")});
  EXPECT_TRUE(run.status.exited && run.status.code == 3) << run.status.describe() << run.output;
  EXPECT_NE(run.output.find("bad.safetensors"), std::string::npos) << run.output;
}

TEST(DtrainCli, MnistSubset) {
  const std::string mnist = std::string(DTRAIN_SOURCE_DIR) + "/data/mnist";
  if (!std::filesystem::exists(mnist + "/train-images-idx3-ubyte")) {
    GTEST_SKIP() << "MNIST not fetched (scripts/fetch_mnist.sh)";
  }
  testing::TempDir dir;
  CliRun run = run_dtrain({"train", std::string(DTRAIN_SOURCE_DIR) + "/examples/mnist_mlp.toml",
                        "--output", dir.file("out"), "--set", "data.path=\"" + mnist + "\"", "--set",
                        "data.train_limit=3000", "--set", "data.test_limit=1000", "--set",
                        "train.epochs=2", "--set", "schedule.warmup_steps=10"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  const auto at = run.output.find("test accuracy ");
  ASSERT_NE(at, std::string::npos) << run.output;
  EXPECT_GT(std::stod(run.output.substr(at + 14)), 85.0) << run.output;
}

}  // namespace
}  // namespace dtrain
