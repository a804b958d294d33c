// Runs the dtrain executable as a user would: real processes, real files.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_test_util.h"
#include "core/deadline.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// fc2's out_features is on line 26 (BadJobFilesExitWithCode2AndNameTheLine).
const std::string kBlobsJob = testing::TestJob()
                                  .name("blobs")
                                  .seed(5)
                                  .synthetic(1200, 10, 3)
                                  .mlp({32})
                                  .optimizer("adam", 0.01)
                                  .epochs(3)
                                  .batch(50)
                                  .set("train.log_every_steps", "10")
                                  .toml();

TEST(DtrainCli, TrainsEvaluatesAndResumes) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  const std::string out = dir.file("out");
  CliRun train =
      run_dtrain({"train", dir.file("job.toml"), "--output", out, "--progress", "plain"});
  ASSERT_TRUE(train.status.ok()) << train.status.describe() << "\n" << train.output;
  EXPECT_NE(train.output.find("epoch 3 done"), std::string::npos) << train.output;
  EXPECT_NE(train.output.find("done: 3 epochs, 60 steps"), std::string::npos) << train.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(out + "/metrics.jsonl"));
  EXPECT_TRUE(std::filesystem::exists(out + "/ckpt-60.dtc"));

  CliRun eval = run_dtrain({"eval", dir.file("job.toml"), "--weights", out + "/model.safetensors"});
  ASSERT_TRUE(eval.status.ok()) << eval.output;
  EXPECT_NE(eval.output.find("240 test samples: accuracy"), std::string::npos) << eval.output;

  // Two more epochs resume from the checkpoint of step 60.
  CliRun more =
      run_dtrain({"train", dir.file("job.toml"), "--output", out, "--set", "train.epochs=5"});
  ASSERT_TRUE(more.status.ok()) << more.output;
  EXPECT_NE(more.output.find("resumed from " + out + "/ckpt-60.dtc at step 60: epoch 4"),
            std::string::npos)
      << more.output;
  EXPECT_NE(more.output.find("done: 5 epochs, 100 steps"), std::string::npos) << more.output;
}

TEST(DtrainCli, MirroredWorkers) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers",
                           "3", "--strategy", "mirrored"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("strategy mirrored with 3 workers"), std::string::npos) << run.output;
}

TEST(DtrainCli, BadJobFilesExitWithCode2AndNameTheLine) {
  testing::TempDir dir;
  std::string job = kBlobsJob;
  job.replace(job.find("out_features = 3\n"), 16, "out_featurs = 3");
  write_file(dir.file("job.toml"), job);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out")});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("job.toml:26: 'model.layers[2].out_featurs': unknown key"),
            std::string::npos)
      << run.output;

  write_file(dir.file("job2.toml"), kBlobsJob);
  run = run_dtrain({"train", dir.file("job2.toml"), "--set", "model.layers.2.in_features=31"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("linear 'fc2': input (1, 32) does not match in_features 31"),
            std::string::npos)
      << run.output;
}

TEST(DtrainCli, CorruptWeightsExitWithCode3) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  write_file(dir.file("bad.safetensors"), std::string("\x0a\0\0\0\0\0\0\0{not json}", 18));
  CliRun run = run_dtrain({"eval", dir.file("job.toml"), "--weights", dir.file("bad.safetensors")});
  EXPECT_TRUE(run.status.exited && run.status.code == 3) << run.status.describe() << run.output;
  EXPECT_NE(run.output.find("bad.safetensors"), std::string::npos) << run.output;
}

// The largest relative difference between two weight files of one model.
double max_relative_difference(const std::string& a, const std::string& b) {
  const StateDict x = io::load_safetensors(a);
  const StateDict y = io::load_safetensors(b);
  double worst = 0.0;
  for (const auto& [name, t] : x) {
    const Tensor& u = y.at(name);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double d = std::abs(double(t.data()[i]) - double(u.data()[i])) /
                       std::max(1e-3, std::abs(double(t.data()[i])));
      worst = std::max(worst, d);
    }
  }
  return worst;
}

TEST(DtrainCli, AllReduceWorkersMatchOneProcess) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun one = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("one")});
  ASSERT_TRUE(one.status.ok()) << one.output;
  for (const char* workers : {"2", "3"}) {
    const std::string out = dir.file(std::string("w") + workers);
    CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", out, "--workers", workers});
    ASSERT_TRUE(run.status.ok()) << run.output;
    EXPECT_NE(run.output.find("[rank 0] blobs: "), std::string::npos) << run.output;
    EXPECT_NE(run.output.find(std::string("strategy allreduce with ") + workers + " workers"),
              std::string::npos)
        << run.output;
    EXPECT_LT(
        max_relative_difference(dir.file("one/model.safetensors"), out + "/model.safetensors"),
        1e-4);
  }
  // Two micro-batches per worker and update: still the same updates.
  CliRun accumulated = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("acc"),
                                   "--workers", "2", "--set", "distributed.accumulation_steps=2"});
  ASSERT_TRUE(accumulated.status.ok()) << accumulated.output;
  EXPECT_NE(accumulated.output.find("done: 3 epochs, 60 steps"), std::string::npos)
      << accumulated.output;
  EXPECT_LT(
      max_relative_difference(dir.file("one/model.safetensors"), dir.file("acc/model.safetensors")),
      1e-4);
}

TEST(DtrainCli, ACheckpointOfFourWorkersResumesWithTwo) {
  // Checkpoints hold the position in global batches, not per-worker state:
  // 2 epochs on 4 workers, then 2 more on 2 workers, equal 4 epochs on 1.
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun one = run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("one"), "--set", "train.epochs=4"});
  ASSERT_TRUE(one.status.ok()) << one.output;
  CliRun four = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("elastic"),
                            "--workers", "4", "--set", "train.epochs=2"});
  ASSERT_TRUE(four.status.ok()) << four.output;
  CliRun two = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("elastic"),
                           "--workers", "2", "--set", "train.epochs=4"});
  ASSERT_TRUE(two.status.ok()) << two.output;
  EXPECT_NE(
      two.output.find("[rank 0] resumed from " + dir.file("elastic") + "/ckpt-40.dtc at step 40"),
      std::string::npos)
      << two.output;
  EXPECT_NE(two.output.find("done: 4 epochs, 80 steps"), std::string::npos) << two.output;
  EXPECT_LT(max_relative_difference(dir.file("one/model.safetensors"),
                                    dir.file("elastic/model.safetensors")),
            1e-4);
}

// A port that was free a moment ago (for a coordinator under mpirun).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(DtrainCli, UnderMpirun) {
  if (access("/usr/bin/mpirun", X_OK) != 0) GTEST_SKIP() << "OpenMPI's mpirun is not installed";
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun one = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("one")});
  ASSERT_TRUE(one.status.ok()) << one.output;
  // native: dtrain's own collectives, authenticated with the job secret;
  // insecure: the same without a secret, on purpose (--insecure); mpi: MPI
  // only, which needs neither a secret nor a coordinator.
  for (const std::string variant : {"native", "insecure", "mpi"}) {
    const std::string backend = variant == "mpi" ? "mpi" : "native";
    std::vector<std::string> argv = {"/bin/sh",         "-c",  "exec \"$0\" \"$@\" 2>&1",
                                     "/usr/bin/mpirun", "-np", "2",
                                     "--oversubscribe", "-x",  "OPENBLAS_NUM_THREADS=1"};
    if (backend == "native") {
      argv.insert(argv.end(),
                  {"-x", "DTRAIN_COORDINATOR=127.0.0.1:" + std::to_string(free_port())});
    }
    if (variant == "native")
      argv.insert(argv.end(), {"-x", "DTRAIN_JOB_SECRET=mpirun-test-secret"});
    const std::string out = dir.file("mpi-" + variant);
    argv.insert(argv.end(), {DTRAIN_BINARY, "train", dir.file("job.toml"), "--output", out, "--set",
                             "distributed.backend=\"" + backend + "\""});
    if (variant == "insecure") argv.push_back("--insecure");
    testing::ChildProcess child =
        testing::ChildProcess::spawn(argv, {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
                                            {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
                                            {"ASAN_OPTIONS", "detect_leaks=0"}});
    auto status = child.wait(Deadline::after(std::chrono::seconds(240)));
    ASSERT_TRUE(status && status->ok()) << variant << ": " << child.output();
    for (const char* rank : {"rank 0 of 2", "rank 1 of 2"}) {
      EXPECT_EQ(child.output().find(std::string(rank) + ": running WITHOUT a job secret") !=
                    std::string::npos,
                variant == "insecure")
          << variant << ": " << child.output();
    }
    EXPECT_NE(child.output().find("strategy allreduce with 2 workers"), std::string::npos)
        << child.output();
    EXPECT_LT(
        max_relative_difference(dir.file("one/model.safetensors"), out + "/model.safetensors"),
        1e-4)
        << backend;
  }
}

// Issue #18 item 4: a process of a job started by another launcher (mpirun,
// srun, by hand) without DTRAIN_JOB_SECRET would accept frames from anyone;
// it refuses to start and says how to make and pass a secret.
TEST(DtrainCli, AHandLaunchedJobWithoutASecretIsRefused) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--rank",
                           "1", "--world-size", "2", "--coordinator", "127.0.0.1:1"});
  EXPECT_EQ(run.status.code, 2) << run.output;
  for (const char* part : {"rank 1 of 2 (started by --rank/--world-size) has no job secret",
                           "mpirun -x DTRAIN_JOB_SECRET", "srun", "--insecure"}) {
    EXPECT_NE(run.output.find(part), std::string::npos) << part << "\n" << run.output;
  }
}

// Issue #18 item 6: a second job on the output folder of a running one stops
// at once naming the first; once the first is gone (even killed), the folder
// is free again.
TEST(DtrainCli, TwoJobsCannotShareAnOutputFolder) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  testing::ChildProcess first = testing::start_endless_job(dir.file("job.toml"), dir.file("out"));
  ASSERT_TRUE(testing::wait_for_output(first, "[rank 0] epoch 1 ")) << first.output();
  CliRun second = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out")});
  EXPECT_EQ(second.status.code, 2) << second.output;
  EXPECT_NE(second.output.find("is in use by another dtrain run: pid " +
                               std::to_string(first.pid()) + " on host "),
            std::string::npos)
      << second.output;
  first.signal(SIGKILL);  // the launcher dies without releasing the lock
  ASSERT_TRUE(first.wait(Deadline::after(std::chrono::seconds(60))).has_value());
  CliRun third = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out")});
  EXPECT_TRUE(third.status.ok()) << third.output;
  EXPECT_NE(third.output.find("is no longer running and did not release it (killed or crashed); "
                              "taking the folder over"),
            std::string::npos)
      << third.output;
}

// Issue #18 item 9: a checkpoint of another job is set aside, saying how to
// force it; --force-resume resumes from it with a warning.
TEST(DtrainCli, ForceResumeTakesACheckpointOfAnotherJob) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun first = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--set",
                             "train.epochs=1", "--set", "train.checkpoint_every_steps=1"});
  ASSERT_TRUE(first.status.ok()) << first.output;
  CliRun forced = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--set",
                              "train.epochs=2", "--set", "job.name=\"other\"", "--force-resume"});
  EXPECT_TRUE(forced.status.ok()) << forced.output;
  EXPECT_NE(forced.output.find("written by job 'blobs', this job is 'other'; using it anyway (the "
                               "identity check is forced)"),
            std::string::npos)
      << forced.output;
  EXPECT_NE(forced.output.find("resumed from "), std::string::npos) << forced.output;
  CliRun refused = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--set",
                               "train.epochs=3", "--set", "job.name=\"third\""});
  EXPECT_TRUE(refused.status.ok()) << refused.output;
  EXPECT_NE(refused.output.find("this job is 'third'; moved it to "), std::string::npos)
      << refused.output;
  EXPECT_NE(refused.output.find("starting afresh (one of another job is taken with "
                                "--force-resume)"),
            std::string::npos)
      << refused.output;
}

// Issue #18 item 10: --workers is capped by what the machine can run;
// usage errors exit 2.
TEST(DtrainCli, TooManyWorkersAndUsageErrorsExit2) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun many = run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers", "100000"});
  EXPECT_EQ(many.status.code, 2) << many.output;
  EXPECT_NE(many.output.find("--workers 100000 would start 100000 processes on this machine, more "
                             "than it can run: the cap is "),
            std::string::npos)
      << many.output;
  CliRun capped = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                              "--workers", "3", "--max-local-workers", "2"});
  EXPECT_EQ(capped.status.code, 2) << capped.output;
  EXPECT_NE(capped.output.find("the cap is 2 (--max-local-workers)"), std::string::npos)
      << capped.output;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"train", dir.file("job.toml"), "--bogus"},
        std::vector<std::string>{"train"}, std::vector<std::string>{"nonsense"},
        std::vector<std::string>{"train", dir.file("job.toml"), "--workers", "many"}}) {
    CliRun run = run_dtrain(args);
    EXPECT_EQ(run.status.code, 2) << args.back() << ": " << run.output;
  }
  EXPECT_EQ(run_dtrain({"--help"}).status.code, 0);
  // Issue #18 item 5: an empty output folder wrote into the filesystem root.
  CliRun empty = run_dtrain({"train", dir.file("job.toml"), "--output", ""});
  EXPECT_EQ(empty.status.code, 2) << empty.output;
  EXPECT_NE(empty.output.find("--output must name a folder"), std::string::npos) << empty.output;
}

// Issue #18 item 7: `optimizer.lr = 1e6` used to exit 0 with NaN weights.
// Now the run stops at the first non-finite gradient naming the step (exit
// 6), and every checkpoint left on disk is finite.
TEST(DtrainCli, ANonFiniteGradientStopsTheRunNamingTheStep) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--set",
                           "optimizer.type=\"sgd\"", "--set", "optimizer.lr=1e6", "--set",
                           "train.checkpoint_every_steps=1"});
  EXPECT_EQ(run.status.code, 6) << run.output;
  EXPECT_NE(run.output.find("is not finite"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("dtrain: error: step "), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("optimizer.lr = 1000000"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/model.safetensors")));
  int checkpoints = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("out"))) {
    if (entry.path().extension() != ".dtc") continue;
    ++checkpoints;
    const io::Checkpoint c = io::read_checkpoint(entry.path().string(), io::default_file_system());
    EXPECT_EQ(io::describe_non_finite(c), std::nullopt) << entry.path();
  }
  EXPECT_GT(checkpoints, 0) << run.output;
}

// Issue #18 item 10: the workers' socket files used to stay in /tmp whenever
// a worker was killed. They live in a private folder of the run, which the
// launcher removes however the job ends.
TEST(DtrainCli, AKilledJobLeavesNoSocketFilesBehind) {
  testing::TempDir dir;
  testing::TempDir tmpdir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--workers",
                           "2", "--set", "train.epochs=100"},
                          {{"TMPDIR", tmpdir.path()}, {"DTRAIN_TEST_KILL_AT_STEP", "1:3"}});
  EXPECT_FALSE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("was killed by signal 9 (SIGKILL)"), std::string::npos) << run.output;
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(tmpdir.path())) {
    left.push_back(entry.path().string());
  }
  EXPECT_TRUE(left.empty()) << left.front();
}

TEST(DtrainCli, AKilledWorkerEndsTheJobWithItsName) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  testing::ChildProcess launcher =
      testing::start_endless_job(dir.file("job.toml"), dir.file("out"));
  // Wait until training runs, then SIGKILL the worker that is not rank 0.
  ASSERT_TRUE(testing::wait_for_output(launcher, "[rank 0] epoch 2 ")) << launcher.output();
  std::ifstream children_file("/proc/" + std::to_string(launcher.pid()) + "/task/" +
                              std::to_string(launcher.pid()) + "/children");
  std::vector<pid_t> children;
  for (pid_t pid; children_file >> pid;) children.push_back(pid);
  ASSERT_EQ(children.size(), 2u);
  const pid_t victim = std::max(children[0], children[1]);  // rank 1 starts second
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  auto status = launcher.wait(Deadline::after(std::chrono::seconds(60)));
  ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
  EXPECT_FALSE(status->ok());
  EXPECT_NE(launcher.output().find("worker rank 1 (pid " + std::to_string(victim) +
                                   ") was killed by signal 9 (SIGKILL)"),
            std::string::npos)
      << launcher.output();
}

TEST(DtrainCli, PartitionPrintsTheLabelHistogram) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kBlobsJob);
  CliRun run = run_dtrain({"partition", dir.file("job.toml"), "--kind", "label", "--workers", "3",
                           "--classes-per-worker", "1"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("960 training samples of blobs in 3 parts (label):\n"
                            "worker   c0   c1   c2  total\n"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find(" total"), std::string::npos) << run.output;
  run = run_dtrain({"partition", dir.file("job.toml"), "--kind", "dirichlet", "--alpha", "0"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.output;
  EXPECT_NE(run.output.find("alpha"), std::string::npos) << run.output;
}

TEST(DtrainCli, MnistSubset) {
  const std::string mnist = std::string(DTRAIN_SOURCE_DIR) + "/data/mnist";
  if (!std::filesystem::exists(mnist + "/train-images-idx3-ubyte")) {
    GTEST_SKIP() << "MNIST not fetched (scripts/fetch_mnist.sh)";
  }
  testing::TempDir dir;
  CliRun run = run_dtrain({"train", std::string(DTRAIN_SOURCE_DIR) + "/examples/mnist_mlp.toml",
                           "--output", dir.file("out"), "--set", "data.path=\"" + mnist + "\"",
                           "--set", "data.train_limit=3000", "--set", "data.test_limit=1000",
                           "--set", "train.epochs=2", "--set", "schedule.warmup_steps=10"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  const auto at = run.output.find("test accuracy ");
  ASSERT_NE(at, std::string::npos) << run.output;
  EXPECT_GT(std::stod(run.output.substr(at + 14)), 85.0) << run.output;
}

}  // namespace
}  // namespace dtrain
