// Restart mode (`dtrain train --workers N --max-restarts K`): when a worker is
// SIGKILLed, the launcher itself starts the job again from its last
// checkpoint, and the job ends exactly as one that never failed
// (model.safetensors equal byte for byte); once the restarts are spent a
// failure ends the job with the failing worker's code; a launcher that is
// itself interrupted does not restart.
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
using namespace ft_test;

constexpr uint64_t kSeed = 91;  // of the kill points

std::vector<std::string> train_args(const testing::TempDir& tmp, const std::string& out,
                                    int max_restarts) {
  return {
      "train", tmp.file("job.toml"), "--output", tmp.file(out),    "--progress",
      "plain", "--workers",          "2",        "--max-restarts", std::to_string(max_restarts)};
}

// Reads until `text` appears in the child's output; its offset, or npos at
// EOF or the deadline.
size_t wait_for_text(testing::ChildProcess& child, const std::string& text, Deadline deadline) {
  size_t at;
  while ((at = child.output().find(text)) == std::string::npos) {
    if (deadline.expired() || !child.read_some(100)) return child.output().find(text);
  }
  return at;
}

// SIGKILLs worker `rank` of the job `launcher` runs; its pid, or -1 (with a
// test failure) when the launcher does not have exactly `workers` children.
pid_t kill_worker(const testing::ChildProcess& launcher, int rank, size_t workers) {
  const std::vector<pid_t> children = children_of(launcher.pid());
  EXPECT_EQ(children.size(), workers) << launcher.output();
  if (children.size() != workers) return -1;
  const pid_t victim = children[static_cast<size_t>(rank)];
  EXPECT_EQ(kill(victim, SIGKILL), 0);
  return victim;
}

std::string restart_line(int rank, pid_t pid, int restart, int max_restarts) {
  return "worker rank " + std::to_string(rank) + " (pid " + std::to_string(pid) +
         ") was killed by signal 9 (SIGKILL); restarting the job from its last checkpoint "
         "(restart " +
         std::to_string(restart) + " of " + std::to_string(max_restarts) + ")";
}

TEST(RestartMode, KilledWorkerIsRestartedAndEndsWithTheSameWeights) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const std::string reference = run_to_end(train_args(tmp, "ref", 1));
  ASSERT_NE(reference.find("[rank 0] done: 3 epochs, 60 steps"), std::string::npos) << reference;
  EXPECT_EQ(reference.find("restarting"), std::string::npos) << reference;

  Rng rng(kSeed);
  testing::ChildProcess launcher = start_dtrain(train_args(tmp, "out", 1));
  const size_t steps = 2 + static_cast<size_t>(rng.below(12));
  ASSERT_TRUE(wait_for_steps(launcher, steps, Deadline::after(120s))) << launcher.output();
  const pid_t victim = kill_worker(launcher, 1, 2);
  ASSERT_GT(victim, 0);

  const std::optional<testing::ExitStatus> status = launcher.wait(Deadline::after(120s));
  ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
  const std::string& output = launcher.output();
  EXPECT_TRUE(status->ok()) << status->describe() << "\n" << output;
  const size_t restart_at = output.find(restart_line(1, victim, 1, 1));
  ASSERT_NE(restart_at, std::string::npos) << output;
  EXPECT_NE(output.find("restart 1 of 1: the workers were started", restart_at), std::string::npos)
      << output;

  // Rank 0 writes a checkpoint after every step it prints: the restarted job
  // continues from the last step printed before the failure, or the one
  // before, when the stop fell between the progress line and its checkpoint.
  const std::vector<int64_t> before = step_lines(output.substr(0, restart_at));
  ASSERT_FALSE(before.empty()) << output;
  const int64_t resumed = resumed_step(output, restart_at);
  EXPECT_TRUE(resumed == before.back() || resumed == before.back() - 1)
      << "resumed at " << resumed << ", the failed job printed step " << before.back() << "\n"
      << output;
  std::printf("[          ] killed rank 1 at step %lld, resumed at %lld\n",
              static_cast<long long>(before.back()), static_cast<long long>(resumed));
  EXPECT_NE(output.find("[rank 0] done: 3 epochs, 60 steps", restart_at), std::string::npos)
      << output;
  expect_same_bytes(tmp.file("ref/model.safetensors"), tmp.file("out/model.safetensors"));
}

TEST(RestartMode, AFailureAfterTheLastRestartEndsTheJob) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  Rng rng(kSeed + 1);
  testing::ChildProcess launcher = start_dtrain(train_args(tmp, "out", 1));
  ASSERT_TRUE(
      wait_for_steps(launcher, 2 + static_cast<size_t>(rng.below(10)), Deadline::after(120s)))
      << launcher.output();
  const pid_t first = kill_worker(launcher, 1, 2);
  ASSERT_GT(first, 0);

  // The restarted job: rank 0 killed after a few of its steps.
  const size_t started =
      wait_for_text(launcher, "restart 1 of 1: the workers were started", Deadline::after(120s));
  ASSERT_NE(started, std::string::npos) << launcher.output();
  ASSERT_TRUE(wait_for_steps(launcher, 2 + static_cast<size_t>(rng.below(10)),
                             Deadline::after(120s), started))
      << launcher.output();
  const pid_t second = kill_worker(launcher, 0, 2);
  ASSERT_GT(second, 0);

  const std::optional<testing::ExitStatus> status = launcher.wait(Deadline::after(120s));
  ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
  const std::string& output = launcher.output();
  // A worker killed by a signal makes the launcher exit with code 1.
  EXPECT_TRUE(status->exited && status->code == 1) << status->describe() << "\n" << output;
  const std::string restarted = restart_line(1, first, 1, 1);
  const size_t restart_at = output.find(restarted);
  ASSERT_NE(restart_at, std::string::npos) << output;
  EXPECT_NE(output.find("worker rank 0 (pid " + std::to_string(second) +
                        ") was killed by signal 9 (SIGKILL)"),
            std::string::npos)
      << output;
  EXPECT_EQ(output.find("restarting", restart_at + restarted.size()), std::string::npos)
      << "a second restart:\n"
      << output;
}

TEST(RestartMode, InterruptedLauncherIsNotRestarted) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  testing::ChildProcess launcher = start_dtrain(train_args(tmp, "out", 2));
  ASSERT_TRUE(wait_for_steps(launcher, 3, Deadline::after(120s))) << launcher.output();
  launcher.signal(SIGTERM);
  const std::optional<testing::ExitStatus> status = launcher.wait(Deadline::after(120s));
  ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
  EXPECT_TRUE(status->exited && status->code == 128 + SIGTERM) << status->describe() << "\n"
                                                               << launcher.output();
  EXPECT_NE(launcher.output().find("launcher received SIGTERM"), std::string::npos)
      << launcher.output();
  EXPECT_EQ(launcher.output().find("restarting"), std::string::npos) << launcher.output();
}

}  // namespace
}  // namespace dtrain
