// The parameter-server strategy through the dtrain executable: S servers and N
// workers as real processes on loopback (started by dtrain's launcher, or by
// mpirun), compared with one process and with allreduce on the same job.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "cli_test_util.h"
#include "core/deadline.h"
#include "io/safetensors.h"
#include "testing/fault_fs.h"
#include "testing/ports.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 10 steps of SGD with momentum on blobs (a global batch of 48 splits evenly
// over 1, 2 and 3 workers).
const std::string kJob = testing::TestJob()
                             .name("ps-blobs")
                             .seed(7)
                             .synthetic(600, 10, 3)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .set("optimizer.momentum", "0.9")
                             .epochs(1)
                             .set("train.max_steps", "10")
                             .batch(48)
                             .set("train.log_every_steps", "1")
                             .toml();

// max over tensors of max|a - b| / max|a|: 0 for equal files.
double relative_difference(const std::string& a, const std::string& b) {
  const StateDict x = io::load_safetensors(a);
  const StateDict y = io::load_safetensors(b);
  EXPECT_EQ(x.size(), y.size());
  double worst = 0.0;
  for (const auto& [name, t] : x) {
    const Tensor& u = y.at(name);
    EXPECT_EQ(t.numel(), u.numel()) << name;
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      diff = std::max(diff, std::abs(double(t.data()[i]) - double(u.data()[i])));
      scale = std::max(scale, std::abs(double(t.data()[i])));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

// The loss of each progress line "epoch E step S/T (global G): loss L ...".
std::vector<double> step_losses(const std::string& output) {
  std::vector<double> losses;
  for (size_t at = 0; (at = output.find("): loss ", at)) != std::string::npos; at += 8) {
    losses.push_back(std::stod(output.substr(at + 8)));
  }
  return losses;
}

TEST(PsCli, SyncMatchesOneProcessAndAllReduce) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun one = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("one")});
  ASSERT_TRUE(one.status.ok()) << one.output;
  const std::vector<double> one_losses = step_losses(one.output);
  ASSERT_EQ(one_losses.size(), 10u) << one.output;
  CliRun allreduce = run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("allreduce"), "--workers", "2"});
  ASSERT_TRUE(allreduce.status.ok()) << allreduce.output;
  struct Shape {
    const char* servers;
    const char* workers;
  };
  for (const Shape s :
       {Shape{"1", "1"}, Shape{"1", "2"}, Shape{"2", "1"}, Shape{"2", "2"}, Shape{"1", "3"}}) {
    SCOPED_TRACE(std::string("servers ") + s.servers + ", workers " + s.workers);
    const std::string out = dir.file(std::string("ps-") + s.servers + "-" + s.workers);
    CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", out, "--strategy", "ps",
                             "--servers", s.servers, "--workers", s.workers});
    ASSERT_TRUE(run.status.ok()) << run.output;
    // Worker 0 is global rank S and reports; the servers log as themselves.
    const std::string chief = "[rank " + std::string(s.servers) + "] ";
    EXPECT_NE(run.output.find(chief + "ps-blobs: "), std::string::npos) << run.output;
    EXPECT_NE(run.output.find(std::string("strategy ps with ") + s.workers + " worker"),
              std::string::npos)
        << run.output;
    EXPECT_NE(run.output.find("[rank 0] [info] server 0 of " + std::string(s.servers)),
              std::string::npos)
        << run.output;
    EXPECT_NE(run.output.find(chief + "done: 1 epochs, 10 steps"), std::string::npos) << run.output;
    // The reported loss is the job's (the servers sum every worker's), not
    // worker 0's: each step's equals the one process's to the printed digits.
    const std::vector<double> losses = step_losses(run.output);
    ASSERT_EQ(losses.size(), one_losses.size()) << run.output;
    for (size_t i = 0; i < losses.size(); ++i) {
      EXPECT_NEAR(losses[i], one_losses[i], 1.5e-4) << "step " << i + 1;
    }
    EXPECT_LT(relative_difference(dir.file("one/model.safetensors"), out + "/model.safetensors"),
              1e-5);
    EXPECT_LT(
        relative_difference(dir.file("allreduce/model.safetensors"), out + "/model.safetensors"),
        1e-5);
  }
}

TEST(PsCli, AsyncAndSspLearn) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const char* consistency : {"async", "ssp"}) {
    SCOPED_TRACE(consistency);
    const std::string out = dir.file(consistency);
    CliRun run = run_dtrain(
        {"train", dir.file("job.toml"), "--output", out, "--strategy", "ps", "--servers", "2",
         "--workers", "2", "--set", std::string("distributed.consistency=") + consistency, "--set",
         "distributed.staleness=1", "--set", "train.max_steps=30", "--set", "train.epochs=3"});
    ASSERT_TRUE(run.status.ok()) << run.output;
    EXPECT_NE(run.output.find(std::string(consistency) + "): serving at"), std::string::npos)
        << run.output;
    const std::vector<double> losses = step_losses(run.output);
    ASSERT_EQ(losses.size(), 30u) << run.output;
    // The mean of the last five steps' losses is well below chance level,
    // ln 3 for three classes. (Not "below the first step's loss": in async
    // the other worker may have trained for many steps before worker 0's
    // first one on a loaded machine, so that loss can already be low.)
    double last = 0.0;
    for (size_t i = losses.size() - 5; i < losses.size(); ++i) last += losses[i] / 5.0;
    EXPECT_LT(last, 0.5 * std::log(3.0)) << run.output;
    EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
  }
}

TEST(PsCli, ResumedRunEqualsAnUninterruptedOne) {
  // Two workers: the servers sum the pushes in worker order, so the comparison
  // is exact; the checkpoint carries the servers' momentum buffers.
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::vector<std::string> ps = {"--strategy", "ps", "--servers", "2",
                                       "--workers",  "2",  "--set",     "train.epochs=2"};
  auto args = [&](const std::string& out, std::vector<std::string> more) {
    std::vector<std::string> a = {"train", dir.file("job.toml"), "--output", out};
    a.insert(a.end(), ps.begin(), ps.end());
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  CliRun whole = run_dtrain(args(dir.file("whole"), {"--set", "train.max_steps=20"}));
  ASSERT_TRUE(whole.status.ok()) << whole.output;
  CliRun first = run_dtrain(args(dir.file("split"), {"--set", "train.max_steps=8"}));
  ASSERT_TRUE(first.status.ok()) << first.output;
  CliRun rest = run_dtrain(args(dir.file("split"), {"--set", "train.max_steps=20"}));
  ASSERT_TRUE(rest.status.ok()) << rest.output;
  EXPECT_NE(rest.output.find("resumed from " + dir.file("split") + "/ckpt-8.dtc at step 8"),
            std::string::npos)
      << rest.output;
  EXPECT_EQ(
      relative_difference(dir.file("whole/model.safetensors"), dir.file("split/model.safetensors")),
      0.0);
}

TEST(PsCli, BadPsConfigurationsAreConfigErrors) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--servers", "0"}, "'distributed.ps.servers': must be at least 1, got 0"},
      {{"--set", "distributed.servers=0"}, "'distributed.servers': must be at least 1, got 0"},
      {{"--set", "distributed.consistency=\"eventual\""},
       "'distributed.consistency': 'eventual' is not one of: sync, async, ssp"},
      {{"--set", "distributed.staleness=-1"},
       "'distributed.staleness': must not be negative, got -1"},
      {{"--workers", "2", "--set", "distributed.backup_workers=2"},
       "'distributed.backup_workers': 2 backup workers with 2 workers: must be in [0, 2)"},
      {{"--set", "distributed.workers=3", "--set", "distributed.backup_workers=3"},
       "'distributed.backup_workers'"},
      {{"--workers", "3", "--set", "distributed.backup_workers=1", "--set",
        "distributed.consistency=\"async\""},
       "backup workers"},
      {{"--workers", "2", "--min-workers", "3"}, "'train.min_workers': 3 is more than the job's 2"},
      {{"--workers", "2", "--max-restarts", "1", "--set", "distributed.dynamic_batch=true"},
       "restarting failed ps processes with dynamic batch sizing is not supported"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"train",         dir.file("job.toml"), "--output",
                                     dir.file("out"), "--strategy",         "ps"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CliRun run = run_dtrain(args);
    SCOPED_TRACE(run.output);
    EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
    EXPECT_NE(run.output.find(c.message), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir.file("out/model.safetensors")));
  }
}

// `dtrain train JOB --strategy ps --servers 1 --output OUTPUT` under
// `mpirun -np 3` (server 0, workers 0 and 1) with `exported` ("NAME=value")
// in every rank's environment: whether it succeeded, and its output.
std::pair<bool, std::string> mpirun_ps(const std::string& exported, const std::string& job,
                                       const std::string& output) {
  testing::ChildProcess child =
      testing::ChildProcess::spawn({"/bin/sh",
                                    "-c",
                                    "exec \"$0\" \"$@\" 2>&1",
                                    "/usr/bin/mpirun",
                                    "-np",
                                    "3",
                                    "--oversubscribe",
                                    "-x",
                                    exported,
                                    "-x",
                                    "OPENBLAS_NUM_THREADS=1",
                                    "-x",
                                    "DTRAIN_JOB_SECRET=mpirun-test-secret",
                                    DTRAIN_BINARY,
                                    "train",
                                    job,
                                    "--output",
                                    output,
                                    "--strategy",
                                    "ps",
                                    "--servers",
                                    "1"},
                                   {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
                                    {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
                                    {"ASAN_OPTIONS", "detect_leaks=0"}});
  auto status = child.wait(Deadline::after(std::chrono::seconds(240)));
  EXPECT_TRUE(status.has_value()) << child.output();
  return {status && status->ok(), child.output()};
}

TEST(PsCli, UnderMpirunTheFirstRanksAreServers) {
  if (access("/usr/bin/mpirun", X_OK) != 0) GTEST_SKIP() << "OpenMPI's mpirun is not installed";
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun one = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("one")});
  ASSERT_TRUE(one.status.ok()) << one.output;
  const auto [ok, output] =
      mpirun_ps("DTRAIN_COORDINATOR=127.0.0.1:" + std::to_string(testing::free_loopback_port()),
                dir.file("job.toml"), dir.file("mpi"));
  ASSERT_TRUE(ok) << output;
  EXPECT_NE(output.find("strategy ps with 2 workers"), std::string::npos) << output;
  EXPECT_LT(
      relative_difference(dir.file("one/model.safetensors"), dir.file("mpi/model.safetensors")),
      1e-5);
}

// Under another launcher, DTRAIN_RUN_DIR gives the servers fixed ipc
// endpoints whose frames go without MAC and CRC: every process refuses a
// folder that other users may enter, and trains in a private one.
TEST(PsCli, UnderAnotherLauncherARunFolderOthersMayEnterIsRefused) {
  if (access("/usr/bin/mpirun", X_OK) != 0) GTEST_SKIP() << "OpenMPI's mpirun is not installed";
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string run_dir = dir.file("run");
  std::filesystem::create_directory(run_dir);
  namespace fs = std::filesystem;
  fs::permissions(run_dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  const auto [refused_ok, refused] =
      mpirun_ps("DTRAIN_RUN_DIR=" + run_dir, dir.file("job.toml"), dir.file("open"));
  EXPECT_FALSE(refused_ok) << refused;
  EXPECT_NE(refused.find("the ipc folder '" + run_dir + "' is open to group or others"),
            std::string::npos)
      << refused;
  fs::permissions(run_dir, fs::perms::owner_all);
  const auto [private_ok, trained] =
      mpirun_ps("DTRAIN_RUN_DIR=" + run_dir, dir.file("job.toml"), dir.file("private"));
  EXPECT_TRUE(private_ok) << trained;
  EXPECT_NE(trained.find("strategy ps with 2 workers"), std::string::npos) << trained;
  EXPECT_TRUE(fs::exists(dir.file("private/model.safetensors"))) << trained;
}

// Co-located servers (distributed.ps.colocate, --colocate): server i runs on
// a thread of worker process i, so the launcher starts N processes, not S + N.

// Whether every tensor of the two weight files holds the same bytes.
bool same_bits(const std::string& a, const std::string& b) {
  const StateDict x = io::load_safetensors(a);
  const StateDict y = io::load_safetensors(b);
  if (x.size() != y.size()) return false;
  for (const auto& [name, t] : x) {
    const Tensor& u = y.at(name);
    if (t.numel() != u.numel() ||
        std::memcmp(t.data(), u.data(), static_cast<size_t>(t.numel()) * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

TEST(PsColocatedCli, SyncEqualsSeparateServerProcessesBitForBit) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun one = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("one")});
  ASSERT_TRUE(one.status.ok()) << one.output;
  struct Shape {
    const char* servers;
    const char* workers;
  };
  for (const Shape s : {Shape{"2", "2"}, Shape{"1", "2"}, Shape{"2", "3"}}) {
    SCOPED_TRACE(std::string("servers ") + s.servers + ", workers " + s.workers);
    const std::string name = std::string(s.servers) + "-" + s.workers;
    const std::vector<std::string> ps = {"--strategy", "ps",        "--servers",
                                         s.servers,    "--workers", s.workers};
    std::vector<std::string> separate = {"train", dir.file("job.toml"), "--output",
                                         dir.file("separate-" + name)};
    separate.insert(separate.end(), ps.begin(), ps.end());
    CliRun apart = run_dtrain(separate);
    ASSERT_TRUE(apart.status.ok()) << apart.output;
    std::vector<std::string> colocated = {"train", dir.file("job.toml"), "--output",
                                          dir.file("colocated-" + name), "--colocate"};
    colocated.insert(colocated.end(), ps.begin(), ps.end());
    CliRun together = run_dtrain(colocated);
    ASSERT_TRUE(together.status.ok()) << together.output;
    // N processes: worker 0 is rank 0, it hosts server 0 and reports.
    EXPECT_NE(
        together.output.find("[rank 0] [info] worker 0: hosted ps server 0: listening on ipc://"),
        std::string::npos)
        << together.output;
    EXPECT_NE(together.output.find("[rank 0] done: 1 epochs, 10 steps"), std::string::npos)
        << together.output;
    EXPECT_EQ(together.output.find("[rank " + std::string(s.workers) + "]"), std::string::npos)
        << together.output;
    EXPECT_TRUE(same_bits(dir.file("separate-" + name + "/model.safetensors"),
                          dir.file("colocated-" + name + "/model.safetensors")));
    // And the one process on the global batch, as the separate servers are
    // (PsCli.SyncMatchesOneProcessAndAllReduce): equal up to the order of the sums.
    EXPECT_LT(relative_difference(dir.file("one/model.safetensors"),
                                  dir.file("colocated-" + name + "/model.safetensors")),
              1e-5);
  }
}

TEST(PsColocatedCli, UnsupportedCombinationsAreConfigErrorsNamingBothSettings) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--servers", "3", "--workers", "2"},
       "'distributed.ps.colocate': 3 servers with 2 workers: each co-located server runs in a "
       "worker process of its own"},
      {{"--servers", "2", "--workers", "2", "--replicas", "1"},
       "'distributed.ps.colocate': co-located servers with distributed.ps.replicas = 1 are not "
       "supported"},
      {{"--servers", "1", "--workers", "2", "--max-restarts", "1"},
       "'train.max_restarts': restarting failed processes (1) with distributed.ps.colocate is "
       "not supported"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"train",         dir.file("job.toml"), "--output",
                                     dir.file("out"), "--strategy",         "ps",
                                     "--colocate"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CliRun run = run_dtrain(args);
    SCOPED_TRACE(run.output);
    EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
    EXPECT_NE(run.output.find(c.message), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir.file("out/model.safetensors")));
  }
}

TEST(PsColocatedCli, WithoutFixedEndpointsItIsRefusedNamingWhatItNeeds) {
  // DTRAIN_TCP_ONLY leaves the ps job to the rendezvous, which has no
  // server processes to meet when the servers are co-located.
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--strategy",
                           "ps", "--colocate", "--workers", "2"},
                          {{"DTRAIN_TCP_ONLY", "1"}});
  EXPECT_FALSE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("distributed.ps.colocate needs fixed server endpoints"),
            std::string::npos)
      << run.output;
}

TEST(PsColocatedCli, AKilledHostingWorkerStopsTheJobNamingItsServer) {
  // Worker 1 hosts server 1; SIGKILLed at step 3 it takes its shard with it:
  // the job stops (nothing can replace the shard), naming it.
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--strategy",
                           "ps", "--colocate", "--servers", "2", "--workers", "2", "--set",
                           "train.max_steps=1000", "--set", "train.epochs=100"},
                          {{"DTRAIN_TEST_KILL_AT_STEP", "1:3"}});
  EXPECT_FALSE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("worker 1 (hosting ps server 1)"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/model.safetensors")));
}

}  // namespace
}  // namespace dtrain
