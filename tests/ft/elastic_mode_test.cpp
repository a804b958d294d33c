// Elastic mode (`dtrain train --workers N --elastic`): when a worker is
// SIGKILLed the survivors re-form their group and finish the job without a
// restart; a replacement worker (--max-restarts) joins the running group;
// once fewer than --min-workers are left the job stops, naming the lost
// slot. The kill comes from the worker itself at a chosen step
// (DTRAIN_TEST_KILL_AT_STEP=SLOT:STEP, a test hook of the cli), so it is the
// same in every run; a replacement joins when the test opens its gate
// (DTRAIN_TEST_JOIN_GATE, a FIFO), never by timing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "ft_test_util.h"
#include "io/safetensors.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using namespace ft_test;

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

std::vector<std::string> mnist_args(const testing::TempDir& tmp, const std::string& out) {
  return {"train",     std::string(DTRAIN_SOURCE_DIR) + "/examples/mnist_mlp.toml",
          "--output",  tmp.file(out),
          "--workers", "3",
          "--elastic", "--min-workers",
          "2",         "--no-resume",
          "--set",     "data.path=\"" + mnist_dir() + "\"",
          "--set",     "data.train_limit=3000",
          "--set",     "data.test_limit=1000",
          "--set",     "train.epochs=2",
          "--set",     "train.log_every_steps=1",
          "--set",     "schedule.warmup_steps=10"};
}

TEST(ElasticMode, SurvivorsOfAKilledWorkerFinishAtTheFaultFreeAccuracy) {
  if (!have_mnist()) {
    GTEST_SKIP() << "MNIST not fetched (scripts/fetch_mnist.sh)";
  }
  testing::TempDir tmp;
  const JobRun reference = run_job(mnist_args(tmp, "ref"), {});
  ASSERT_TRUE(reference.status && reference.status->ok()) << reference.output;
  EXPECT_EQ(reference.output.find("re-form"), std::string::npos) << reference.output;

  // Slot 1 dies after step 30 of 48 (mid-epoch 2); no replacement.
  const JobRun faulty = run_job(mnist_args(tmp, "out"), {{"DTRAIN_TEST_KILL_AT_STEP", "1:30"}});
  ASSERT_TRUE(faulty.status && faulty.status->ok()) << faulty.output;
  EXPECT_NE(faulty.output.find("was killed by signal 9 (SIGKILL); continuing with 2 worker(s)"),
            std::string::npos)
      << faulty.output;
  EXPECT_EQ(count(faulty.output, "the group re-formed in "), 2u) << faulty.output;  // slots 0, 2
  EXPECT_NE(faulty.output.find("rank 1 of 2, continuing at step 30"), std::string::npos)
      << faulty.output;
  EXPECT_NE(faulty.output.find("[rank 0] done: 2 epochs, 48 steps"), std::string::npos)
      << faulty.output;
  EXPECT_NEAR(final_accuracy(faulty.output), final_accuracy(reference.output), 0.5)
      << faulty.output;
  const StateDict weights = io::load_safetensors(tmp.file("out") + "/model.safetensors");
  for (const auto& [name, tensor] : weights) {
    for (float v : tensor.to_vector()) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

std::vector<std::string> synthetic_args(const testing::TempDir& tmp, const std::string& min_workers,
                                        const std::string& max_restarts) {
  return {"train",      tmp.file("job.toml"), "--output",      tmp.file("out"),  "--workers",
          "3",          "--elastic",          "--min-workers", min_workers,      "--max-restarts",
          max_restarts, "--no-resume",        "--set",         "train.epochs=60"};
}

TEST(ElasticMode, AReplacementWorkerJoinsTheRunningGroupAtAStepBoundary) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  // The replacement for slot 1 waits at this FIFO until the survivors have
  // re-formed without it, then joins the running group.
  const std::string gate = tmp.file("join-gate");
  ASSERT_EQ(mkfifo(gate.c_str(), 0600), 0);
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY};
  const std::vector<std::string> args = synthetic_args(tmp, "2", "1");
  argv.insert(argv.end(), args.begin(), args.end());
  testing::ChildProcess job =
      testing::ChildProcess::spawn(argv, {{"OPENBLAS_NUM_THREADS", "1"},
                                          {"DTRAIN_TEST_KILL_AT_STEP", "1:10"},
                                          {"DTRAIN_TEST_JOIN_GATE", gate}});
  const Deadline deadline = Deadline::after(240s);
  const std::string shrunk = "slot 0: the group re-formed in ";
  while (job.output().find(shrunk) == std::string::npos) {
    ASSERT_FALSE(deadline.expired()) << job.output();
    ASSERT_TRUE(job.read_some(100)) << "the job ended first: " << job.output();
  }
  // The replacement opens the gate for reading once it has started.
  int fd = -1;
  while ((fd = open(gate.c_str(), O_WRONLY | O_NONBLOCK)) < 0) {
    ASSERT_EQ(errno, ENXIO);
    ASSERT_FALSE(deadline.expired()) << job.output();
    ASSERT_TRUE(job.read_some(100)) << "the job ended first: " << job.output();
  }
  ASSERT_EQ(write(fd, "go\n", 3), 3);
  close(fd);
  const std::optional<testing::ExitStatus> status = job.wait(deadline);
  const std::string& out = job.output();
  ASSERT_TRUE(status && status->ok()) << out;
  EXPECT_NE(out.find("starting a new worker for slot 1 (restart 1 of 1)"), std::string::npos)
      << out;
  // Both re-formations, each with its duration: without slot 1, then with
  // the replacement last in rank order.
  EXPECT_NE(out.find(" s: generation 1, rank 0 of 2, continuing at step 10"), std::string::npos)
      << out;
  EXPECT_NE(out.find("slots by rank 0, 2, 1"), std::string::npos) << out;
  EXPECT_NE(out.find(" s: generation 2, rank 0 of 3, continuing at step "), std::string::npos)
      << out;
  EXPECT_NE(out.find("slot 1: joined the running group in "), std::string::npos) << out;
  EXPECT_EQ(out.find("did not join within"), std::string::npos) << out;  // nobody waited for it
  EXPECT_NE(out.find("[rank 0] done: 60 epochs, 1200 steps"), std::string::npos) << out;
}

TEST(ElasticMode, FewerThanMinWorkersStopsTheJobNamingTheLostSlot) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const JobRun run = run_job(synthetic_args(tmp, "3", "0"), {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_NE(run.output.find("2 worker(s) left, fewer than min_workers = 3: stopping the "
                            "job (lost: slot 1 (pid "),
            std::string::npos)
      << run.output;
}

TEST(ElasticMode, RefusedUnderAnotherLauncher) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const JobRun run =
      run_job({"train", tmp.file("job.toml"), "--output", tmp.file("out"), "--elastic", "--rank",
               "0", "--world-size", "2", "--coordinator", "127.0.0.1:1"},
              {{"DTRAIN_JOB_SECRET", "a-secret"}});
  ASSERT_TRUE(run.status.has_value());
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_NE(run.output.find("use restart mode instead"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace dtrain
