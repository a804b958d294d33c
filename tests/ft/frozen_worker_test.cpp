// A frozen worker (issue #18, items 1-3): one worker process stops itself
// with SIGSTOP at a chosen step (DTRAIN_TEST_STOP_AT_STEP=SLOT:STEP, a test
// hook of the cli), as `kill -STOP` would, and the job must react within the
// heartbeat timeout (1 s here), never at a collective's deadline (set to
// 10 min here, longer than a test waits, so a job that waited for it fails
// the test):
//  - allreduce: the job fails naming the silent rank, not the healthy rank
//    that noticed;
//  - elastic: the survivors re-form without it and finish; the launcher
//    exits when training is done; the worker, once resumed (SIGCONT), exits
//    0 saying it was dropped, and the job's exit code stays 0;
//  - ps: the servers declare it dead and the others finish; resumed, it
//    learns that the job went on without it and exits 0 with one line;
//    with every worker stopped, the server ends once its rejoin window
//    passed and the job fails naming it (never a wait without end).
// Each reaction is asserted through the log lines that name its mechanism,
// never through how long it took (bench/ft/frozen_worker_bench.sh measures
// that).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
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

using namespace std::chrono_literals;
using namespace ft_test;

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The common settings: 1 s heartbeat timeout, 10 min deadline on every
// collective and request.
std::vector<std::string> frozen_args(const testing::TempDir& tmp, std::vector<std::string> more) {
  std::vector<std::string> args = {"train",
                                   tmp.file("job.toml"),
                                   "--output",
                                   tmp.file("out"),
                                   "--no-resume",
                                   "--progress",
                                   "plain",
                                   "--set",
                                   "train.epochs=60",
                                   "--set",
                                   "distributed.heartbeat_timeout_ms=1000",
                                   "--set",
                                   "distributed.timeout_ms=600000"};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(FrozenWorker, AnAllreduceJobFailsWithinTheHeartbeatTimeoutNamingTheSilentRank) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const JobRun run =
      run_job(frozen_args(tmp, {"--workers", "3"}), {{"DTRAIN_TEST_STOP_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_EQ(run.status->code, 4) << run.output;  // a communication failure
  // The launcher blames rank 1 (stopped, never exited), not the rank whose
  // exit it saw first.
  EXPECT_TRUE(has(run.output, "] worker rank 1 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output, ") stopped responding or failed: worker rank ")) << run.output;
  EXPECT_TRUE(has(run.output, "no heartbeat for")) << run.output;
  EXPECT_FALSE(has(run.output, "did not complete within")) << run.output;
}

TEST(FrozenWorker, AnElasticGroupDropsTheSilentWorkerWhichExitsCleanlyWhenResumed) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  testing::ChildProcess job =
      start_dtrain(frozen_args(tmp, {"--workers", "3", "--elastic", "--min-workers", "2"}),
                   {{"DTRAIN_TEST_STOP_AT_STEP", "1:5"}});
  const Deadline deadline = Deadline::after(240s);
  ASSERT_TRUE(wait_for_text(job, "generation 1 formed", deadline)) << job.output();
  // Dropped because its peers reported it silent, not after the settle time.
  EXPECT_TRUE(has(job.output(), "reports slot 1 silent; the round does not wait for it"))
      << job.output();
  EXPECT_FALSE(has(job.output(), "which did not join within")) << job.output();
  const std::vector<pid_t> workers = children_of(job.pid());
  ASSERT_EQ(workers.size(), 3u) << job.output();
  kill(workers[1], SIGCONT);
  const std::optional<testing::ExitStatus> status = job.wait(deadline);
  ASSERT_TRUE(status.has_value()) << "the launcher did not exit: " << job.output();
  EXPECT_TRUE(status->ok()) << status->describe() << "\n" << job.output();
  // It woke up either while the group still trained (the coordinator tells
  // it it was left out) or after training ended (the launcher tells it).
  EXPECT_TRUE(has(job.output(), "slot 1: dropped from the job: ") ||
              has(job.output(), "the job finished training without this process"))
      << job.output();
  EXPECT_TRUE(has(job.output(), "[rank 0] done: 60 epochs")) << job.output();
}

TEST(FrozenWorker, AnElasticJobEndsWhenTrainingIsDoneThoughAWorkerStaysStopped) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const JobRun run =
      run_job(frozen_args(tmp, {"--workers", "3", "--elastic", "--min-workers", "2"}),
              {{"DTRAIN_TEST_STOP_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << "the launcher did not exit: " << run.output;
  EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
  EXPECT_TRUE(has(run.output, "still runs after the job finished training without it"))
      << run.output;
}

TEST(FrozenWorker, APsWorkerResumedAfterItWasDeclaredDeadExitsCleanly) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  // Slots: server 0, workers 1 and 2.
  testing::ChildProcess job =
      start_dtrain(frozen_args(tmp, {"--strategy", "ps", "--servers", "1", "--workers", "2"}),
                   {{"DTRAIN_TEST_STOP_AT_STEP", "2:5"}});
  const Deadline deadline = Deadline::after(240s);
  ASSERT_TRUE(wait_for_text(job, "worker 1 declared dead", deadline)) << job.output();
  const std::vector<pid_t> slots = children_of(job.pid());
  ASSERT_EQ(slots.size(), 3u) << job.output();
  kill(slots[2], SIGCONT);
  const std::optional<testing::ExitStatus> status = job.wait(deadline);
  ASSERT_TRUE(status.has_value()) << "the launcher did not exit: " << job.output();
  EXPECT_TRUE(status->ok()) << status->describe() << "\n" << job.output();
  EXPECT_TRUE(has(job.output(), "the job went on without it") ||
              has(job.output(), "the job finished training without this process"))
      << job.output();
  EXPECT_FALSE(has(job.output(), "elastic job")) << job.output();  // it is not one
}

TEST(FrozenWorker, APsJobWhoseWorkersAllStoppedEndsNamingItInsteadOfWaitingForever) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  // Slots: server 0, workers 1 and 2, both stopped for good. The servers'
  // rejoin window is distributed.timeout_ms (10 s here); then the server
  // fails and the launcher stops the job.
  const JobRun run = run_job(frozen_args(tmp, {"--strategy", "ps", "--servers", "1", "--workers",
                                               "2", "--set", "distributed.timeout_ms=10000"}),
                             {{"DTRAIN_TEST_STOP_AT_STEP", "1:5,2:5"}});
  ASSERT_TRUE(run.status.has_value()) << "the launcher did not exit: " << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "ps server 0: every worker has been dead for more than 10000 ms"))
      << run.output;
  EXPECT_TRUE(has(run.output, "ps server 0 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output, "the job cannot go on without it")) << run.output;
}

}  // namespace
}  // namespace dtrain
