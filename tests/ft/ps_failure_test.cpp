// Failures of a parameter-server job under dtrain's own launcher
// (`dtrain train --strategy ps`, cli/ps_launch.h): a worker or a server is
// SIGKILLed in mid-training and the job finishes at the fault-free accuracy,
// with or without a restarted process; a server lost with no restart left
// stops the job naming it. The kill comes from the process itself at a
// chosen step (DTRAIN_TEST_KILL_AT_STEP=SLOT:STEP, cli/test_hooks.h: a
// worker after its trainer step, a server when its version reaches STEP),
// so it is the same in every run. Slots: servers 0 and 1, workers 2 and 3.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace ft_test;

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The MNIST MLP on 3000 samples, 2 epochs of 24 steps, sync, 2 servers and
// 2 workers, a checkpoint every 10 steps, workers declared dead after 2 s.
std::vector<std::string> mnist_args(const std::string& out, const std::string& max_restarts) {
  return {"train",
          std::string(DTRAIN_SOURCE_DIR) + "/examples/mnist_mlp.toml",
          "--output",
          out,
          "--strategy",
          "ps",
          "--servers",
          "2",
          "--workers",
          "2",
          "--max-restarts",
          max_restarts,
          "--no-resume",
          "--progress",
          "plain",
          "--set",
          "data.path=\"" + mnist_dir() + "\"",
          "--set",
          "data.train_limit=3000",
          "--set",
          "data.test_limit=1000",
          "--set",
          "train.epochs=2",
          "--set",
          "train.log_every_steps=8",
          "--set",
          "train.checkpoint_every_steps=10",
          "--set",
          "distributed.heartbeat_timeout_ms=2000"};
}

class PsFailure : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mnist()) {
      GTEST_SKIP() << "MNIST not fetched (scripts/fetch_mnist.sh)";
    }
  }

  // The fault-free run's accuracy, computed once for the suite.
  static double reference_accuracy() {
    static const double accuracy = [] {
      testing::TempDir tmp;
      const JobRun run = run_job(mnist_args(tmp.file("ref"), "0"), {});
      EXPECT_TRUE(run.status && run.status->ok()) << run.output;
      EXPECT_FALSE(has(run.output, "killed")) << run.output;
      return final_accuracy(run.output);
    }();
    return accuracy;
  }

  // A run whose slot `slot` kills itself after step (or at version) `step`.
  static JobRun faulty(const testing::TempDir& tmp, const std::string& slot,
                       const std::string& step, const std::string& max_restarts) {
    return run_job(mnist_args(tmp.file("out"), max_restarts),
                   {{"DTRAIN_TEST_KILL_AT_STEP", slot + ":" + step}});
  }
};

TEST_F(PsFailure, AKilledWorkerIsDeclaredDeadAndTheOthersFinishAtTheFaultFreeAccuracy) {
  testing::TempDir tmp;
  // Worker 1 (slot 3) dies after step 30 of 48, in epoch 2; no restart.
  const JobRun run = faulty(tmp, "3", "30", "0");
  ASSERT_TRUE(run.status && run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "worker 1 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output, "was killed by signal 9 (SIGKILL); continuing with 1 worker(s)\n"))
      << run.output;
  EXPECT_TRUE(has(run.output, "ps server 0: worker 1 declared dead at version ")) << run.output;
  // Worker 0 takes the whole global batch from then on.
  EXPECT_TRUE(has(run.output, "the global batch is split over 1 worker(s) (worker(s) 1 missed"))
      << run.output;
  EXPECT_TRUE(has(run.output, "[rank 2] done: 2 epochs, 48 steps")) << run.output;
  EXPECT_NEAR(final_accuracy(run.output), reference_accuracy(), 0.5) << run.output;
}

TEST_F(PsFailure, ARestartedWorkerJoinsAtTheJobsStepAndTheJobFinishesAtTheFaultFreeAccuracy) {
  testing::TempDir tmp;
  const JobRun run = faulty(tmp, "3", "30", "1");
  ASSERT_TRUE(run.status && run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output,
                  "continuing with 1 worker(s); starting worker 1 again (restart 1 "
                  "of 1)"))
      << run.output;
  // It joins at step 30, or later when its start took longer than the
  // heartbeat timeout and the others went on without it meanwhile.
  const std::string joined = "ps worker 1: joined the running job at step ";
  const size_t at = run.output.find(joined);
  ASSERT_NE(at, std::string::npos) << run.output;
  const int64_t step = std::stoll(run.output.substr(at + joined.size()));
  EXPECT_GE(step, 30) << run.output;
  EXPECT_LT(step, 48) << run.output;
  EXPECT_TRUE(has(run.output, "[rank 2] done: 2 epochs, 48 steps")) << run.output;
  EXPECT_NEAR(final_accuracy(run.output), reference_accuracy(), 0.5) << run.output;
}

TEST_F(PsFailure, AKilledServerIsReplacedFromTheCheckpointAndTheJobFinishesAtTheFaultFreeAccuracy) {
  testing::TempDir tmp;
  // Server 1 dies when its version reaches 30; checkpoints were taken at
  // steps 10, 20 and 24 (the end of epoch 1).
  const JobRun run = faulty(tmp, "1", "30", "1");
  ASSERT_TRUE(run.status && run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "ps server 1 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output,
                  "was killed by signal 9 (SIGKILL); starting its replacement "
                  "(restart 1 of 1)"))
      << run.output;
  EXPECT_TRUE(has(run.output,
                  "ps server 1: replacement restored its shard from " + tmp.file("out") + "/ckpt-"))
      << run.output;
  EXPECT_TRUE(has(run.output, "ps worker 0: re-joined replaced server 1 in ")) << run.output;
  EXPECT_TRUE(has(run.output, "ps worker 1: re-joined replaced server 1 in ")) << run.output;
  EXPECT_TRUE(has(run.output, "[rank 2] done: 2 epochs, 48 steps")) << run.output;
  EXPECT_NEAR(final_accuracy(run.output), reference_accuracy(), 0.5) << run.output;
}

// A small synthetic job for the stops: the failure must end the job, not hang it.
std::vector<std::string> synthetic_args(const testing::TempDir& tmp) {
  return {"train",          tmp.file("job.toml"),
          "--output",       tmp.file("out"),
          "--strategy",     "ps",
          "--servers",      "2",
          "--workers",      "2",
          "--no-resume",    "--set",
          "train.epochs=60"};
}

TEST(PsFailureStops, ALostServerWithNoRestartLeftStopsTheJobNamingIt) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  // Stopped at once (SIGTERM to the others), not after a worker's deadline:
  // the workers wait 10 min for the lost server, longer than run_job waits
  // for the job (240 s), so only the launcher's stop ends it in time.
  std::vector<std::string> args = synthetic_args(tmp);
  args.insert(args.end(), {"--set", "distributed.timeout_ms=600000"});
  const JobRun run = run_job(args, {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "ps server 1 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output,
                  "was killed by signal 9 (SIGKILL); the job cannot go on without it "
                  "and no restart is left (max_restarts = 0): stopping the job"))
      << run.output;
}

TEST(PsFailureStops, ALostChiefWorkerWithNoRestartLeftStopsTheJobNamingIt) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const JobRun run = run_job(synthetic_args(tmp), {{"DTRAIN_TEST_KILL_AT_STEP", "2:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "worker 0 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output, "the job cannot go on without it and no restart is left"))
      << run.output;
}

}  // namespace
}  // namespace dtrain
