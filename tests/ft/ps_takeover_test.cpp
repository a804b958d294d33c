// A ps server's death that a backup covers, through `dtrain train` (the
// launcher, cli/supervisor.h, and the takeover, docs/parameter-server.md
// "A backup takes over"): `--servers 2 --workers 2 --replicas 1` with no
// restart left (train.max_restarts = 0). Server 1 SIGKILLs itself when its
// version reaches a chosen step (DTRAIN_TEST_KILL_AT_STEP, cli/test_hooks.h);
// server 0 serves its range from its copy and the job goes on to the same
// bytes as a fault-free run. Without the takeover, or once no copy of a
// range is left, the launcher stops the job naming the servers. Slots:
// servers 0 and 1, workers 2 and 3.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace ft_test;
using namespace std::chrono_literals;

// 16 sync steps on blobs (a global batch of 48 over 2 workers), no checkpoint.
const std::string kBlobs = testing::TestJob()
                               .name("ps-takeover")
                               .seed(11)
                               .synthetic(600, 10, 3)
                               .mlp({32})
                               .optimizer("sgd", 0.05)
                               .epochs(2)
                               .batch(48)
                               .set("train.max_steps", "16")
                               .set("train.log_every_steps", "1")
                               .toml();

const std::map<std::string, std::vector<std::string>> kOptimizers = {
    {"sgd+momentum", {"--set", "optimizer.momentum=0.9"}},
    {"adam", {"--set", "optimizer.type=\"adam\"", "--set", "optimizer.lr=0.01"}},
};

// `dtrain train` of kBlobs into `out` with 2 servers, 2 workers, one
// replica and `max_restarts`, then `extra`.
std::vector<std::string> takeover_args(const testing::TempDir& tmp, const std::string& out,
                                       const std::vector<std::string>& extra,
                                       const std::string& max_restarts = "0") {
  std::vector<std::string> args = {"train",          tmp.file("job.toml"),
                                   "--output",       tmp.file(out),
                                   "--strategy",     "ps",
                                   "--servers",      "2",
                                   "--workers",      "2",
                                   "--replicas",     "1",
                                   "--max-restarts", max_restarts,
                                   "--no-resume",    "--progress",
                                   "plain"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(PsTakeoverCli, ACoveredServerDeathWithNoRestartLeftEndsLikeAFaultFreeRun) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  for (const auto& [optimizer, extra] : kOptimizers) {
    SCOPED_TRACE(optimizer);
    const JobRun clean = run_job(takeover_args(tmp, "clean-" + optimizer, extra), {});
    ASSERT_TRUE(clean.status && clean.status->ok()) << clean.output;
    ASSERT_FALSE(has(clean.output, "SIGKILL")) << clean.output;
    const JobRun run = run_job(takeover_args(tmp, "killed-" + optimizer, extra),
                               {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
    ASSERT_TRUE(run.status.has_value()) << run.output;
    EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
    EXPECT_TRUE(has(run.output, "ps server 1 (pid ")) << run.output;
    EXPECT_TRUE(has(run.output,
                    "was killed by signal 9 (SIGKILL); ps server 1's range is served by ps server "
                    "0 (a backup takes it over: distributed.ps.replicas = 1, takeover on), "
                    "unreplicated for the rest of the run; no restart is left (max_restarts = 0): "
                    "the job goes on without it"))
        << run.output;
    EXPECT_TRUE(has(run.output, "ps server 0: took over server 1's range")) << run.output;
    EXPECT_FALSE(has(run.output, "starting its replacement")) << run.output;
    EXPECT_TRUE(has(run.output, "[rank 2] done: ")) << run.output;
    expect_same_bytes(tmp.file("clean-" + optimizer + "/model.safetensors"),
                      tmp.file("killed-" + optimizer + "/model.safetensors"));
  }
}

TEST(PsTakeoverCli, WithARestartLeftTheReplacementIsStartedAndTheJobEndsLikeAFaultFreeRun) {
  // The rule with restarts left is today's: a replacement is started (it
  // retires when the backup took the range over, or serves it when the
  // backup refused), and the run ends as a fault-free one.
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  const std::vector<std::string> momentum = kOptimizers.at("sgd+momentum");
  const JobRun clean = run_job(takeover_args(tmp, "clean", momentum), {});
  ASSERT_TRUE(clean.status && clean.status->ok()) << clean.output;
  const JobRun run =
      run_job(takeover_args(tmp, "killed", momentum, "1"), {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
  EXPECT_TRUE(has(run.output,
                  "was killed by signal 9 (SIGKILL); starting its replacement (restart 1 of 1)"))
      << run.output;
  EXPECT_FALSE(has(run.output, "the job goes on without it")) << run.output;
  expect_same_bytes(tmp.file("clean/model.safetensors"), tmp.file("killed/model.safetensors"));
}

TEST(PsTakeoverCli, WithoutTheTakeoverAServerDeathWithNoRestartLeftStopsTheJobNamingIt) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  // The workers wait 10 min for a lost server, longer than run_job waits
  // (240 s): only the launcher's stop ends the job in time.
  const JobRun run = run_job(takeover_args(tmp, "out",
                                           {"--set", "distributed.ps.takeover=false", "--set",
                                            "distributed.timeout_ms=600000"}),
                             {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "ps server 1 (pid ")) << run.output;
  EXPECT_TRUE(has(run.output,
                  "was killed by signal 9 (SIGKILL); the job cannot go on without it and no "
                  "restart is left (max_restarts = 0): stopping the job"))
      << run.output;
  EXPECT_FALSE(has(run.output, "took over server 1's range")) << run.output;
  EXPECT_FALSE(std::filesystem::exists(tmp.file("out/model.safetensors")));
}

TEST(PsTakeoverCli, TheDeathOfTheLastCopyStopsTheJobNamingBothServers) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  // Server 1 dies at version 4 and server 0 takes its range over; server 0
  // dies at version 8, holding the only copies of both ranges.
  const JobRun run = run_job(takeover_args(tmp, "out", {"--set", "distributed.timeout_ms=600000"}),
                             {{"DTRAIN_TEST_KILL_AT_STEP", "1:4,0:8"}});
  ASSERT_TRUE(run.status.has_value()) << run.output;
  EXPECT_FALSE(run.status->ok()) << run.output;
  EXPECT_TRUE(has(run.output, "ps server 0: took over server 1's range")) << run.output;
  EXPECT_TRUE(has(run.output, "the job goes on without it")) << run.output;
  expect_stop_naming(run.output,
                     "no live copy is left of the ranges of ps server 0 and ps server 1 (every "
                     "server that held one died: ps server 1 (pid ",
                     {") was killed by signal 9 (SIGKILL), ps server 0 (pid ",
                      "the job cannot go on without it and no restart is left (max_restarts = "
                      "0): stopping the job"},
                     tmp.file("out"));
}

// A silent primary is taken over and, once it runs again, fenced
// (docs/parameter-server.md "Fencing"). Server 0 SIGSTOPs itself when its
// version reaches 5 (DTRAIN_TEST_STOP_AT_STEP): alive, its connections open,
// answering nothing. The workers' requests to it go unanswered past the
// heartbeat timeout, and so does their liveness probe; they ask its backup,
// server 1, which serves range 0 at term 1, and the job goes on. The test
// then SIGCONTs it: the notice of the new term its workers left it fences it
// (it stops serving range 0, says so once, and retires), and the final
// model is the fault-free run's, byte for byte. The mechanism is asserted
// from the log lines, not from times.
TEST(PsTakeoverSilentCli, AStoppedPrimaryIsTakenOverThenFencedWhenResumedAndTheModelIsUnchanged) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  for (const auto& [optimizer, extra] : kOptimizers) {
    SCOPED_TRACE(optimizer);
    std::vector<std::string> args = extra;
    args.insert(args.end(), {"--set", "distributed.heartbeat_timeout_ms=1000", "--set",
                             "distributed.timeout_ms=60000"});
    const JobRun clean = run_job(takeover_args(tmp, "clean-" + optimizer, args), {});
    ASSERT_TRUE(clean.status && clean.status->ok()) << clean.output;
    ASSERT_FALSE(has(clean.output, "at term")) << clean.output;
    // The workers pace their steps (50 ms each) so that training is still
    // going when the test resumes server 0: its fencing is then seen by a
    // running job (it would also be after the end; nothing here is timed).
    testing::ChildProcess job =
        start_dtrain(takeover_args(tmp, "silent-" + optimizer, args),
                     {{"DTRAIN_TEST_STOP_AT_STEP", "0:5"}, {"DTRAIN_TEST_STEP_MS", "50"}});
    const Deadline deadline = Deadline::after(240s);
    ASSERT_TRUE(wait_for_text(job, "ps server 1: took over server 0's range at version", deadline))
        << job.output();
    const std::vector<pid_t> slots = children_of(job.pid());
    ASSERT_EQ(slots.size(), 4u) << job.output();
    kill(slots[0], SIGCONT);
    const std::optional<testing::ExitStatus> status = job.wait(deadline);
    ASSERT_TRUE(status.has_value()) << "the launcher did not exit: " << job.output();
    const std::string out = job.output();
    EXPECT_TRUE(status->ok()) << status->describe() << "\n" << out;
    for (const char* line : {
             // The trigger: no answer, not even to the probe; not a broken connection.
             "server 0 sent nothing for 1000 ms during ",
             "nor answered a liveness probe within 1000 ms more: asking its backups to take its "
             "range over (it is at term 0)",
             // The takeover at term 1 (at version 4 or 5: whether server 0 had
             // shipped version 5's update when it stopped, in its close).
             "ps server 1: took over server 0's range at version ",
             ", term 1 (its copy: values, optimizer buffers and sparse rows)",
             "; backup server 1 serves its range from version ",
             " at term 1 on ",
             // Resumed, the old primary learns the new term and stops serving.
             "ps server 0: server 0 stopped serving range 0 (it held it at term 0): ",
             "carries term 1, another server took the range over",
             "ps server 0: retires: range 0 is served at term 1 by another server",
             "[rank 2] done: ",
         }) {
      EXPECT_TRUE(has(out, line)) << line << "\n" << out;
    }
    EXPECT_FALSE(has(out, "TimeoutError")) << out;
    EXPECT_FALSE(has(out, "lost the connection to server 0")) << out;
    expect_same_bytes(tmp.file("clean-" + optimizer + "/model.safetensors"),
                      tmp.file("silent-" + optimizer + "/model.safetensors"));
  }
}

// The same stop, never resumed: the launcher saw no death (nothing ended),
// so once both workers are done it tells the stopped server to exit (with a
// SIGCONT so that it hears it) instead of waiting for it for ever; how it
// ends does not change the job's exit code.
TEST(PsTakeoverSilentCli, AStoppedPrimaryThatNeverResumesIsToldToExitOnceTheWorkersAreDone) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  const JobRun run = run_job(takeover_args(tmp, "stopped",
                                           {"--set", "distributed.heartbeat_timeout_ms=1000",
                                            "--set", "distributed.timeout_ms=60000"}),
                             {{"DTRAIN_TEST_STOP_AT_STEP", "0:5"}});
  ASSERT_TRUE(run.status.has_value()) << "the launcher did not exit: " << run.output;
  EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
  for (const char* line : {"ps server 1: took over server 0's range at version ",
                           "[rank 2] done: ", "ps server 0 (pid ",
                           "still runs after the job finished training without it"}) {
    EXPECT_TRUE(has(run.output, line)) << line << "\n" << run.output;
  }
}

}  // namespace
}  // namespace dtrain
