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

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace ft_test;

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

}  // namespace
}  // namespace dtrain
