// The per-host agent (`dtrain train JOB --rdzv etcd://... --nnodes MIN:MAX
// --nproc-per-node K`, cli/etcd_agent.h) through the dtrain executable,
// against a real etcd started by the test (skipped without /usr/bin/etcd):
// two agents ("hosts") on loopback, one worker each, form one elastic group
// in etcd; the first agent is SIGKILLed with its process group once its
// worker trained (its worker goes with it: PR_SET_PDEATHSIG); the other
// host's worker re-forms alone, finishes training and writes the final
// model. Bad agent arguments are refused with exit code 2.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "testing/etcd_server.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("agents")
                             .seed(5)
                             .synthetic(4000, 16, 4)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(20)
                             .batch(20)
                             .set("train.log_every_steps", "10")
                             .set("distributed.timeout_ms", "5000")
                             .toml();

// One host: `setsid dtrain train JOB --rdzv ...` in its own process group
// (its pid is the group's id), stderr merged into the captured stdout.
// Its TMPDIR is `tmpdir`, the test's folder: the agent's socket folder goes
// with it even when the test SIGKILLs the agent.
ChildProcess start_agent(const std::string& job, const std::string& out, const std::string& rdzv,
                         const std::string& tmpdir) {
  return ChildProcess::spawn(
      {"/usr/bin/setsid", "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY, "train", job,
       "--output", out, "--rdzv", rdzv, "--nnodes", "1:2", "--nproc-per-node", "1"},
      {{"OPENBLAS_NUM_THREADS", "1"},
       {"DTRAIN_JOB_SECRET", "agents-test-secret"},
       {"DTRAIN_TCP_ONLY", "1"},
       {"TMPDIR", tmpdir}});
}

TEST(EtcdAgentCli, TheSurvivingHostFinishesAfterTheFirstHostIsKilled) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  testing::EtcdServer etcd;
  testing::ready_etcd_client(etcd);
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string rdzv = "etcd://" + etcd.endpoint() + "/agents-test";
  // Separate output folders, as two hosts' local disks (each host's worker
  // locks its own folder while it is rank 0; one shared folder:
  // etcd_shared_output_cli_test.cpp).
  ChildProcess first = start_agent(dir.file("job.toml"), dir.file("out-a"), rdzv, dir.path());
  ASSERT_TRUE(testing::wait_for_output(first, "agent: node 0")) << first.output();
  ChildProcess second = start_agent(dir.file("job.toml"), dir.file("out-b"), rdzv, dir.path());
  // Training has started once the first host's worker logged a step.
  ASSERT_TRUE(testing::wait_for_output(first, "step 10")) << first.output();
  ::kill(-first.pid(), SIGKILL);
  first.wait(Deadline::after(10s));
  const std::optional<testing::ExitStatus> status = second.wait(Deadline::after(120s));
  ASSERT_TRUE(status.has_value()) << second.output();
  EXPECT_EQ(status->code, 0) << status->describe() << "\n" << second.output();
  EXPECT_NE(second.output().find("agent: node 1"), std::string::npos) << second.output();
  EXPECT_NE(second.output().find("generation 1"), std::string::npos) << second.output();
  EXPECT_TRUE(std::filesystem::exists(dir.file("out-b/model.safetensors"))) << second.output();
}

TEST(EtcdAgentCli, RefusesBadAgentArguments) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::vector<std::vector<std::string>> cases = {
      {"--rdzv", "http://127.0.0.1:2379/j", "--nnodes", "1:2"},
      {"--rdzv", "etcd://127.0.0.1:2379/j", "--nnodes", "2:1"},
      {"--rdzv", "etcd://127.0.0.1:2379/j", "--nnodes", "x"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"train", dir.file("job.toml"), "--output", dir.file("out")};
    args.insert(args.end(), c.begin(), c.end());
    const testing::CliRun run = testing::run_dtrain(args, {{"DTRAIN_JOB_SECRET", "s"}});
    EXPECT_EQ(run.status.code, 2) << run.status.describe() << "\n" << run.output;
  }
  const testing::CliRun no_secret =
      testing::run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--rdzv",
                           "etcd://127.0.0.1:2379/j", "--nnodes", "1:2"});
  EXPECT_EQ(no_secret.status.code, 2) << no_secret.output;
  EXPECT_NE(no_secret.output.find("DTRAIN_JOB_SECRET"), std::string::npos) << no_secret.output;
}

}  // namespace
}  // namespace dtrain
