// Restart mode: a dtrain run SIGKILLed at a random step and started again
// with the same command ends with exactly the weights of a run that never
// stopped (model.safetensors equal byte for byte), with one process (local
// strategy) and with two worker processes under the launcher (allreduce),
// where killing one worker ends the whole job.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/rng.h"
#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace ft_test;

constexpr uint64_t kSeed = 77;  // of the kill points

void spin_for(std::chrono::microseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
  }
}

TEST(Restart, KilledLocalRunRestartsToTheSameWeights) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  auto args_for = [&](const std::string& out) {
    return std::vector<std::string>{"train",       tmp.file("job.toml"), "--output",
                                    tmp.file(out), "--progress",         "plain"};
  };
  const std::string reference = run_to_end(args_for("ref"));
  ASSERT_NE(reference.find("done: 3 epochs, 60 steps"), std::string::npos) << reference;

  // Two interruptions: the first run, then the restarted one, each killed
  // after a random number of its steps and a random part of a step.
  Rng rng(kSeed);
  const std::vector<std::string> args = args_for("out");
  int64_t last_printed = 0;
  for (int kill = 0; kill < 2; ++kill) {
    SCOPED_TRACE("kill " + std::to_string(kill));
    const size_t steps = 2 + static_cast<size_t>(rng.below(20));
    testing::ChildProcess run = start_dtrain(args);
    ASSERT_TRUE(wait_for_steps(run, steps, Deadline::after(120s))) << run.output();
    spin_for(std::chrono::microseconds(rng.below(2000)));
    run.signal(SIGKILL);
    const std::optional<testing::ExitStatus> status = run.wait(Deadline::after(30s));
    ASSERT_TRUE(status.has_value());
    ASSERT_FALSE(status->exited) << "the run ended before the kill:\n" << run.output();
    if (kill > 0) {
      // With a checkpoint every step, a restart continues from the last step
      // that was printed (or the one before, when the kill fell between the
      // progress line and its checkpoint).
      const int64_t resumed = resumed_step(run.output());
      EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
          << "resumed at " << resumed << ", the killed run printed step " << last_printed << "\n"
          << run.output();
    }
    last_printed = step_lines(run.output()).back();
    std::printf("[          ] killed at step %lld\n", static_cast<long long>(last_printed));
  }
  const std::string finished = run_to_end(args);
  const int64_t resumed = resumed_step(finished);
  EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
      << "resumed at " << resumed << ", the killed run printed step " << last_printed << "\n"
      << finished;
  EXPECT_NE(finished.find("done: 3 epochs, 60 steps"), std::string::npos) << finished;
  expect_same_bytes(tmp.file("ref/model.safetensors"), tmp.file("out/model.safetensors"));
}

TEST(Restart, KilledWorkerEndsTheJobAndARestartGivesTheSameWeights) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  auto args_for = [&](const std::string& out) {
    return std::vector<std::string>{
        "train", tmp.file("job.toml"), "--output", tmp.file(out), "--progress",
        "plain", "--workers",          "2"};
  };
  const std::string reference = run_to_end(args_for("ref"));
  ASSERT_NE(reference.find("strategy allreduce with 2 workers"), std::string::npos) << reference;
  ASSERT_NE(reference.find("[rank 0] done: 3 epochs, 60 steps"), std::string::npos) << reference;

  // Kill rank 1 in the first run, rank 0 in the restarted one.
  Rng rng(kSeed + 1);
  const std::vector<std::string> args = args_for("out");
  int64_t last_printed = 0;
  for (int victim_rank : {1, 0}) {
    SCOPED_TRACE("killing rank " + std::to_string(victim_rank));
    const size_t steps = 2 + static_cast<size_t>(rng.below(20));
    testing::ChildProcess launcher = start_dtrain(args);
    ASSERT_TRUE(wait_for_steps(launcher, steps, Deadline::after(120s))) << launcher.output();
    spin_for(std::chrono::microseconds(rng.below(2000)));
    const std::vector<pid_t> workers = children_of(launcher.pid());
    ASSERT_EQ(workers.size(), 2u) << launcher.output();
    const pid_t victim = workers[static_cast<size_t>(victim_rank)];
    ASSERT_EQ(kill(victim, SIGKILL), 0);
    const std::optional<testing::ExitStatus> status = launcher.wait(Deadline::after(60s));
    ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
    EXPECT_FALSE(status->ok()) << launcher.output();
    EXPECT_NE(launcher.output().find("worker rank " + std::to_string(victim_rank) + " (pid " +
                                     std::to_string(victim) + ") was killed by signal 9 (SIGKILL)"),
              std::string::npos)
        << launcher.output();
    if (victim_rank == 0) {
      // Rank 0 alone writes checkpoints, every step: the restart continued
      // from the last step the killed job printed, or the one before.
      const int64_t resumed = resumed_step(launcher.output());
      EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
          << "resumed at " << resumed << ", the killed job printed step " << last_printed << "\n"
          << launcher.output();
    }
    last_printed = step_lines(launcher.output()).back();
    std::printf("[          ] killed rank %d at step %lld\n", victim_rank,
                static_cast<long long>(last_printed));
  }
  const std::string finished = run_to_end(args);
  const int64_t resumed = resumed_step(finished);
  EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
      << "resumed at " << resumed << ", the killed job printed step " << last_printed << "\n"
      << finished;
  EXPECT_NE(finished.find("[rank 0] done: 3 epochs, 60 steps"), std::string::npos) << finished;
  expect_same_bytes(tmp.file("ref/model.safetensors"), tmp.file("out/model.safetensors"));
}

}  // namespace
}  // namespace dtrain
