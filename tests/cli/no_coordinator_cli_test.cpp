// Launches without DTRAIN_COORDINATOR (issue #19): a real mpirun, whose
// rank 0 publishes its address in the output folder, and a Slurm-like
// launch (two processes with Slurm's variables set by hand), whose
// coordinator is derived from the node list and the job id.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cli_test_util.h"
#include "comm/rendezvous/slurm_coordinator.h"
#include "core/deadline.h"
#include "testing/fault_fs.h"
#include "testing/ports.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("nocoord")
                             .seed(3)
                             .synthetic(400, 8, 3)
                             .mlp({16})
                             .optimizer("sgd", 0.1)
                             .epochs(2)
                             .batch(40)
                             .toml();

// The coordinator files left in `folder`.
std::vector<std::string> coordinator_files(const std::string& folder) {
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".dtrain-coordinator", 0) == 0) found.push_back(name);
  }
  return found;
}

// `np` ranks of `dtrain train JOB --output OUT extra...` under mpirun, with a
// job secret and no DTRAIN_COORDINATOR; its output after it exited 0.
std::string run_under_mpirun(int np, const std::string& job, const std::string& out,
                             const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {"/bin/sh",
                                   "-c",
                                   "unset DTRAIN_COORDINATOR; exec \"$0\" \"$@\" 2>&1",
                                   "/usr/bin/mpirun",
                                   "-np",
                                   std::to_string(np),
                                   "--oversubscribe",
                                   "-x",
                                   "OPENBLAS_NUM_THREADS=1",
                                   "-x",
                                   "DTRAIN_JOB_SECRET=no-coordinator-secret",
                                   DTRAIN_BINARY,
                                   "train",
                                   job,
                                   "--output",
                                   out};
  argv.insert(argv.end(), extra.begin(), extra.end());
  testing::ChildProcess child =
      testing::ChildProcess::spawn(argv, {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
                                          {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
                                          {"ASAN_OPTIONS", "detect_leaks=0"}});
  const auto status = child.wait(Deadline::after(std::chrono::seconds(240)));
  EXPECT_TRUE(status && status->ok()) << child.output();
  return child.output();
}

// Rank 0 binds an ephemeral port and publishes it in the output folder; the
// others read it there; the file is gone afterwards. For allreduce (rank 0
// a worker) and ps (rank 0 server 0, the workers discover it too).
TEST(NoCoordinator, UnderMpirun) {
  if (access("/usr/bin/mpirun", X_OK) != 0) GTEST_SKIP() << "OpenMPI's mpirun is not installed";
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const bool ps : {false, true}) {
    const std::string out = dir.file(ps ? "ps" : "allreduce");
    const std::string output =
        ps ? run_under_mpirun(3, dir.file("job.toml"), out, {"--strategy", "ps", "--servers", "1"})
           : run_under_mpirun(2, dir.file("job.toml"), out, {});
    EXPECT_NE(output.find("rank 0: rendezvous at 127.0.0.1:"), std::string::npos) << output;
    EXPECT_NE(output.find("published in " + out + "/.dtrain-coordinator-"), std::string::npos)
        << output;
    EXPECT_NE(output.find(ps ? "strategy ps with 2 workers" : "strategy allreduce with 2 workers"),
              std::string::npos)
        << output;
    EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors")) << output;
    EXPECT_EQ(coordinator_files(out), std::vector<std::string>{});  // rank 0 removed it
  }
}

TEST(NoCoordinator, SlurmLikeLaunch) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string out = dir.file("out");
  // A job id whose derived port is free here now (other tests may hold ports).
  uint64_t job_id = 100000 + static_cast<uint64_t>(getpid()) % 1500;
  while (!testing::loopback_port_is_free(comm::slurm_coordinator_port(job_id, 0))) ++job_id;
  std::vector<testing::ChildProcess> tasks;
  for (int rank = 0; rank < 2; ++rank) {
    tasks.push_back(testing::ChildProcess::spawn(
        {"/bin/sh", "-c", "unset DTRAIN_COORDINATOR; exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY,
         "train", dir.file("job.toml"), "--output", out},
        {{"SLURM_PROCID", std::to_string(rank)},
         {"SLURM_LOCALID", std::to_string(rank)},
         {"SLURM_NTASKS", "2"},
         {"SLURM_JOB_ID", std::to_string(job_id)},
         {"SLURM_STEP_ID", "0"},
         {"SLURM_STEP_NODELIST", "localhost"},
         {"SLURM_JOB_NODELIST", "localhost,other[1-3]"},
         {"DTRAIN_JOB_SECRET", "slurm-like-secret"},
         {"OPENBLAS_NUM_THREADS", "1"}}));
  }
  for (testing::ChildProcess& task : tasks) {
    const auto status = task.wait(Deadline::after(std::chrono::seconds(240)));
    EXPECT_TRUE(status && status->ok()) << task.output();
  }
  EXPECT_NE(tasks[0].output().find(fmt::format(
                "coordinator localhost:{} (Slurm: the first host of SLURM_STEP_NODELIST, the "
                "port of SLURM_JOB_ID={} SLURM_STEP_ID=0)",
                comm::slurm_coordinator_port(job_id, 0), job_id)),
            std::string::npos)
      << tasks[0].output();
  EXPECT_NE(tasks[0].output().find("strategy allreduce with 2 workers"), std::string::npos)
      << tasks[0].output();
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
}

}  // namespace
}  // namespace dtrain
