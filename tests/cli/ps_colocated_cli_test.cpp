// Co-located parameter servers through the dtrain executable
// (distributed.ps.colocate, --colocate): server i runs on a thread of worker
// process i, so the launcher starts N processes, not S + N. Real processes
// on loopback, compared with the same job's separate server processes and
// with one process on the global batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "io/safetensors.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 10 steps of SGD with momentum on blobs (a global batch of 48 splits evenly
// over 2 and 3 workers).
const std::string kJob = testing::TestJob()
                             .name("ps-colocated")
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

// max over tensors and elements of |a - b| / max|a|.
double relative_difference(const std::string& a, const std::string& b) {
  const StateDict x = io::load_safetensors(a);
  const StateDict y = io::load_safetensors(b);
  double worst = 0.0;
  for (const auto& [name, t] : x) {
    const Tensor& u = y.at(name);
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      diff = std::max(diff, std::abs(double(t.data()[i]) - double(u.data()[i])));
      scale = std::max(scale, std::abs(double(t.data()[i])));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
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
    // (tests/cli/ps_cli_test.cpp): equal up to the order of the sums.
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
