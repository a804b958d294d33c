// A silent ps primary is taken over and, once it runs again, fenced, through
// `dtrain train` (docs/parameter-server.md "Fencing"): `--servers 2
// --workers 2 --replicas 1`, no restart left. Server 0 SIGSTOPs itself when
// its version reaches a chosen step (DTRAIN_TEST_STOP_AT_STEP, cli/
// test_hooks.h): alive, its connections open, answering nothing. The workers'
// requests to it go unanswered past the heartbeat timeout, and so does their
// liveness probe; they ask its backup, server 1, which serves range 0 at
// term 1, and the job goes on. The test then SIGCONTs server 0: the notice
// of the new term its workers left it fences it (it stops serving range 0,
// says so once, and retires), and the final model is the fault-free run's,
// byte for byte. The mechanism is asserted from the log lines, not from
// times. Slots: servers 0 and 1, workers 2 and 3.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using namespace ft_test;

// 16 sync steps on blobs (a global batch of 48 over 2 workers), no checkpoint.
const std::string kBlobs = testing::TestJob()
                               .name("ps-takeover-silent")
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

std::vector<std::string> silent_args(const testing::TempDir& tmp, const std::string& out,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"train",
                                   tmp.file("job.toml"),
                                   "--output",
                                   tmp.file(out),
                                   "--strategy",
                                   "ps",
                                   "--servers",
                                   "2",
                                   "--workers",
                                   "2",
                                   "--replicas",
                                   "1",
                                   "--max-restarts",
                                   "0",
                                   "--no-resume",
                                   "--progress",
                                   "plain",
                                   "--set",
                                   "distributed.heartbeat_timeout_ms=1000",
                                   "--set",
                                   "distributed.timeout_ms=60000"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(PsTakeoverSilentCli, AStoppedPrimaryIsTakenOverThenFencedWhenResumedAndTheModelIsUnchanged) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kBlobs);
  for (const auto& [optimizer, extra] : kOptimizers) {
    SCOPED_TRACE(optimizer);
    const JobRun clean = run_job(silent_args(tmp, "clean-" + optimizer, extra), {});
    ASSERT_TRUE(clean.status && clean.status->ok()) << clean.output;
    ASSERT_FALSE(has(clean.output, "at term")) << clean.output;
    // The workers pace their steps (50 ms each) so that training is still
    // going when the test resumes server 0: its fencing is then seen by a
    // running job (it would also be after the end; nothing here is timed).
    testing::ChildProcess job =
        start_dtrain(silent_args(tmp, "silent-" + optimizer, extra),
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

}  // namespace
}  // namespace dtrain
