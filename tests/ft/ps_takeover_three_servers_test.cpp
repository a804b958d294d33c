// The takeover through `dtrain train` with three servers (docs/parameter-
// server.md "A backup takes over"; the launcher's view, cli/server_copies.h):
// `--servers 3 --workers 2` with one and two replicas and no restart left
// (train.max_restarts = 0). Servers SIGKILL themselves when their version
// reaches a chosen step (DTRAIN_TEST_KILL_AT_STEP, cli/test_hooks.h). Range p
// is served by server p and copied to servers p+1 ... p+R (mod 3); the first
// live holder of a dead server's range takes it over and serves it
// unreplicated from then on. So with R = 2:
//  - server 0 dies: server 1 serves range 0 (its only copy from then on);
//  - then server 2 dies: server 1 serves range 2 too, and every range is
//    left on server 1 (covered: the job ends like a fault-free run);
//  - or then server 1 dies: range 0's last copy is gone (a named stop).
// Slots: servers 0, 1 and 2, workers 3 and 4.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace ft_test;

// 12 sync steps of SGD + momentum on blobs (a global batch of 48 over 2
// workers), no checkpoint.
const std::string kBlobs = testing::TestJob()
                               .name("ps-takeover-3")
                               .seed(13)
                               .synthetic(600, 10, 3)
                               .mlp({32})
                               .optimizer("sgd", 0.05)
                               .set("optimizer.momentum", "0.9")
                               .epochs(2)
                               .batch(48)
                               .set("train.max_steps", "12")
                               .set("train.log_every_steps", "1")
                               .toml();

// `dtrain train` of kBlobs into `out` with 3 servers, 2 workers,
// `replicas` and no restart left.
std::vector<std::string> three_server_args(const testing::TempDir& tmp, const std::string& out,
                                           const std::string& replicas) {
  return {"train",          tmp.file("job.toml"),
          "--output",       tmp.file(out),
          "--strategy",     "ps",
          "--servers",      "3",
          "--workers",      "2",
          "--replicas",     replicas,
          "--max-restarts", "0",
          "--no-resume",    "--progress",
          "plain"};
}

// The fault-free run's model, into tmp/clean-R<replicas>.
void run_clean(const testing::TempDir& tmp, const std::string& replicas) {
  const JobRun clean = run_job(three_server_args(tmp, "clean-R" + replicas, replicas), {});
  ASSERT_TRUE(clean.status && clean.status->ok()) << clean.output;
  ASSERT_FALSE(has(clean.output, "SIGKILL")) << clean.output;
}

std::string covered_death(int server, int taker, int replicas) {
  return fmt::format(
      "was killed by signal 9 (SIGKILL); ps server {}'s range is served by ps server {} (a "
      "backup takes it over: distributed.ps.replicas = {}, takeover on), unreplicated for the "
      "rest of the run; no restart is left (max_restarts = 0): the job goes on without it",
      server, taker, replicas);
}

// A run with `replicas` whose servers die as `kills` says
// (DTRAIN_TEST_KILL_AT_STEP), each death covered: {server, the server that
// takes its range over} in `takers`. It ends as a fault-free run: exit 0,
// no replacement, the same model bytes.
void expect_like_a_fault_free_run(const std::string& replicas, const std::string& kills,
                                  const std::vector<std::pair<int, int>>& takers) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  ASSERT_NO_FATAL_FAILURE(run_clean(tmp, replicas));
  const JobRun run =
      run_job(three_server_args(tmp, "killed", replicas), {{"DTRAIN_TEST_KILL_AT_STEP", kills}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
  for (const auto& [server, taker] : takers) {
    EXPECT_TRUE(has(run.output, covered_death(server, taker, std::stoi(replicas)))) << run.output;
    EXPECT_TRUE(
        has(run.output, fmt::format("ps server {}: took over server {}'s range", taker, server)))
        << run.output;
  }
  EXPECT_FALSE(has(run.output, "starting its replacement")) << run.output;
  EXPECT_TRUE(has(run.output, "[rank 3] done: ")) << run.output;
  expect_same_bytes(tmp.file("clean-R" + replicas + "/model.safetensors"),
                    tmp.file("killed/model.safetensors"));
}

TEST(PsTakeoverThreeServersCli, OneReplicaAndOneDeathEndsLikeAFaultFreeRun) {
  // Range 1 is copied to server 2 only.
  expect_like_a_fault_free_run("1", "1:5", {{1, 2}});
}

TEST(PsTakeoverThreeServersCli,
     TwoReplicasAndTwoDeathsThatLeaveACopyOfEveryRangeEndLikeAFaultFreeRun) {
  // Server 0 dies at version 3 (server 1 takes range 0 over), server 2 at
  // version 7 (its range's first backup, server 0, is dead: server 1 takes
  // it over). Server 1 ends holding all three ranges.
  expect_like_a_fault_free_run("2", "0:3,2:7", {{0, 1}, {2, 1}});
}

TEST(PsTakeoverThreeServersCli,
     TwoReplicasAndTheDeathOfARangesLastCopyStopsTheJobNamingItsHolders) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  // Server 0 dies at version 3: server 1 serves range 0, unreplicated. Server
  // 1 dies at version 7 with range 0's only copy. The workers' 10 min wait
  // for a lost server is longer than run_job waits (240 s): only the
  // launcher's stop ends the job in time.
  std::vector<std::string> args = three_server_args(tmp, "out", "2");
  args.insert(args.end(), {"--set", "distributed.timeout_ms=600000"});
  const JobRun run = run_job(args, {{"DTRAIN_TEST_KILL_AT_STEP", "0:3,1:7"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, covered_death(0, 1, 2))) << run.output;
  expect_stop_naming(run.output,
                     "no live copy is left of the range of ps server 0 (every server that held "
                     "one died: ps server 0 (pid ",
                     {") was killed by signal 9 (SIGKILL), ps server 1 (pid ",
                      "the job cannot go on without it and no restart is left (max_restarts = "
                      "0): stopping the job"},
                     tmp.file("out"));
}

TEST(PsTakeoverThreeServersCli,
     ASilentBackupIsAskedForAtMostTheHeartbeatTimeoutAndTheNextOneTakesTheRangeOver) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  // Server 1 stops (SIGSTOP: alive, silent) and server 0 dies at version 5.
  // Range 0's first backup is server 1: the workers ask it for at most the
  // heartbeat timeout (1 s), not the requests' 15 s, and server 2 takes the
  // range over. Range 1's primary is stopped, not dead: silent past the
  // heartbeat timeout and its liveness probe, it is taken over too, by
  // server 2 at term 1, and the job goes on. Resumed (the launcher waits for
  // a server it saw no death of), server 1 learns the new term and retires.
  std::vector<std::string> args = three_server_args(tmp, "out", "2");
  args.insert(args.end(), {"--set", "distributed.heartbeat_timeout_ms=1000", "--set",
                           "distributed.timeout_ms=15000"});
  testing::ChildProcess job = start_dtrain(
      args, {{"DTRAIN_TEST_KILL_AT_STEP", "0:5"}, {"DTRAIN_TEST_STOP_AT_STEP", "1:5"}});
  const Deadline deadline = Deadline::after(std::chrono::seconds(240));
  ASSERT_TRUE(wait_for_text(job, "ps server 2: took over server 1's range", deadline))
      << job.output();
  // SIGCONT to every child: server 1 is the stopped one (harmless to the others).
  for (pid_t child : children_of(job.pid())) kill(child, SIGCONT);
  const std::optional<testing::ExitStatus> status = job.wait(deadline);
  ASSERT_TRUE(status.has_value()) << "the launcher did not exit: " << job.output();
  const std::string out = job.output();
  EXPECT_TRUE(status->ok()) << status->describe() << "\n" << out;
  EXPECT_FALSE(has(out, "did not answer within 15000 ms")) << out;
  for (const char* line :
       {"backup server 1 did not answer within 1000 ms whether it takes server 0's range over",
        "lost server 0 during ", "; backup server 2 serves its range from version",
        "ps server 2: took over server 0's range", "server 1 sent nothing for 1000 ms during ",
        "ps server 2: took over server 1's range at version ", ", term 1 (its copy",
        "ps server 1: server 1 stopped serving range 1 (it held it at term 0)"}) {
    EXPECT_TRUE(has(out, line)) << line << "\n" << out;
  }
}

}  // namespace
}  // namespace dtrain
