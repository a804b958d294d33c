// Restart mode: a dtrain run SIGKILLed at a random step and started again
// with the same command ends with exactly the weights of a run that never
// stopped (model.safetensors equal byte for byte), with one process (local
// strategy) and with two worker processes under the launcher (allreduce),
// where killing one worker ends the whole job.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/rng.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kSeed = 77;  // of the kill points

constexpr const char* kJob = R"(
[job]
name = "restart"
seed = 3

[data]
dataset = "synthetic"
synthetic_samples = 1200
synthetic_features = 10
synthetic_classes = 3

[model]
input_shape = [10]

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 32

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
name = "fc2"
out_features = 3

[optimizer]
type = "adam"
lr = 0.01

[schedule]
type = "cosine"
warmup_steps = 5

[train]
epochs = 3
batch_size = 50
log_every_steps = 1
checkpoint_every_steps = 1
keep_checkpoints = 2
)";

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Fails naming the first differing byte unless the two files are equal.
void expect_same_bytes(const std::string& a, const std::string& b) {
  ASSERT_TRUE(std::filesystem::exists(a)) << a;
  ASSERT_TRUE(std::filesystem::exists(b)) << b;
  const std::string x = read_bytes(a), y = read_bytes(b);
  if (x == y) return;
  size_t i = 0;
  while (i < x.size() && i < y.size() && x[i] == y[i]) ++i;
  ADD_FAILURE() << a << " (" << x.size() << " bytes) and " << b << " (" << y.size()
                << " bytes) differ from byte " << i;
}

testing::ChildProcess start_dtrain(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::ChildProcess::spawn(argv, {{"OPENBLAS_NUM_THREADS", "1"}});
}

// Runs dtrain to the end; the output when it exits 0, a failure otherwise.
std::string run_to_end(const std::vector<std::string>& args) {
  testing::ChildProcess run = start_dtrain(args);
  const std::optional<testing::ExitStatus> status = run.wait(Deadline::after(240s));
  EXPECT_TRUE(status.has_value()) << "dtrain did not finish: " << run.output();
  EXPECT_TRUE(status && status->ok()) << (status ? status->describe() : "") << "\n" << run.output();
  return run.output();
}

// The global step numbers of the plain progress lines in `output`
// ("epoch 1 step 3/20 (global 3): ..."), in order.
std::vector<int64_t> step_lines(const std::string& output) {
  std::vector<int64_t> steps;
  size_t at = 0;
  while ((at = output.find("(global ", at)) != std::string::npos) {
    const size_t end = output.find(')', at);
    if (end == std::string::npos) break;
    steps.push_back(std::stoll(output.substr(at + 8, end - at - 8)));
    at = end;
  }
  return steps;
}

// Reads until `count` progress lines arrived; false at EOF or the deadline.
bool wait_for_steps(testing::ChildProcess& child, size_t count, Deadline deadline) {
  while (step_lines(child.output()).size() < count) {
    if (deadline.expired() || !child.read_some(100)) return step_lines(child.output()).size() >= count;
  }
  return true;
}

void spin_for(std::chrono::microseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
  }
}

// The step in "resumed from <path> at step S: ..." in `output`; -1 if absent.
int64_t resumed_step(const std::string& output) {
  const size_t at = output.find("resumed from ");
  if (at == std::string::npos) return -1;
  const size_t s = output.find(" at step ", at);
  if (s == std::string::npos) return -1;
  return std::stoll(output.substr(s + 9));
}

// The launcher's worker processes, ascending pid (rank order: rank r starts
// before rank r + 1).
std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> children;
  for (pid_t child; in >> child;) children.push_back(child);
  std::sort(children.begin(), children.end());
  return children;
}

TEST(Restart, KilledLocalRunRestartsToTheSameWeights) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  auto args_for = [&](const std::string& out) {
    return std::vector<std::string>{"train", tmp.file("job.toml"), "--output", tmp.file(out), "--progress", "plain"};
  };
  const std::string reference = run_to_end(args_for("ref"));
  ASSERT_NE(reference.find("done: 3 epochs, 60 steps"), std::string::npos) << reference;

  // Two interruptions: the first run, then the restarted one, each killed
  // after a random number of its steps and a random part of a step.
  Rng rng(kSeed);
  const std::vector<std::string> args = args_for("out");
  int64_t last_printed = 0;
  for (int kill = 0; kill < 2; ++kill) {
    SCOPED_TRACE("kill " + std::to_string(kill));
    const size_t steps = 2 + static_cast<size_t>(rng.below(20));
    testing::ChildProcess run = start_dtrain(args);
    ASSERT_TRUE(wait_for_steps(run, steps, Deadline::after(120s))) << run.output();
    spin_for(std::chrono::microseconds(rng.below(2000)));
    run.signal(SIGKILL);
    const std::optional<testing::ExitStatus> status = run.wait(Deadline::after(30s));
    ASSERT_TRUE(status.has_value());
    ASSERT_FALSE(status->exited) << "the run ended before the kill:\n" << run.output();
    if (kill > 0) {
      // With a checkpoint every step, a restart continues from the last step
      // that was printed (or the one before, when the kill fell between the
      // progress line and its checkpoint).
      const int64_t resumed = resumed_step(run.output());
      EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
          << "resumed at " << resumed << ", the killed run printed step " << last_printed << "\n"
          << run.output();
    }
    last_printed = step_lines(run.output()).back();
    std::printf("[          ] killed at step %lld\n", static_cast<long long>(last_printed));
  }
  const std::string finished = run_to_end(args);
  const int64_t resumed = resumed_step(finished);
  EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
      << "resumed at " << resumed << ", the killed run printed step " << last_printed << "\n" << finished;
  EXPECT_NE(finished.find("done: 3 epochs, 60 steps"), std::string::npos) << finished;
  expect_same_bytes(tmp.file("ref/model.safetensors"), tmp.file("out/model.safetensors"));
}

TEST(Restart, KilledWorkerEndsTheJobAndARestartGivesTheSameWeights) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  auto args_for = [&](const std::string& out) {
    return std::vector<std::string>{"train", tmp.file("job.toml"), "--output", tmp.file(out), "--progress",
                                    "plain", "--workers", "2"};
  };
  const std::string reference = run_to_end(args_for("ref"));
  ASSERT_NE(reference.find("strategy allreduce with 2 workers"), std::string::npos) << reference;
  ASSERT_NE(reference.find("[rank 0] done: 3 epochs, 60 steps"), std::string::npos) << reference;

  // Kill rank 1 in the first run, rank 0 in the restarted one.
  Rng rng(kSeed + 1);
  const std::vector<std::string> args = args_for("out");
  int64_t last_printed = 0;
  for (int victim_rank : {1, 0}) {
    SCOPED_TRACE("killing rank " + std::to_string(victim_rank));
    const size_t steps = 2 + static_cast<size_t>(rng.below(20));
    testing::ChildProcess launcher = start_dtrain(args);
    ASSERT_TRUE(wait_for_steps(launcher, steps, Deadline::after(120s))) << launcher.output();
    spin_for(std::chrono::microseconds(rng.below(2000)));
    const std::vector<pid_t> workers = children_of(launcher.pid());
    ASSERT_EQ(workers.size(), 2u) << launcher.output();
    const pid_t victim = workers[static_cast<size_t>(victim_rank)];
    ASSERT_EQ(kill(victim, SIGKILL), 0);
    const std::optional<testing::ExitStatus> status = launcher.wait(Deadline::after(60s));
    ASSERT_TRUE(status.has_value()) << "the job did not end: " << launcher.output();
    EXPECT_FALSE(status->ok()) << launcher.output();
    EXPECT_NE(launcher.output().find("worker rank " + std::to_string(victim_rank) + " (pid " +
                                     std::to_string(victim) + ") was killed by signal 9 (SIGKILL)"),
              std::string::npos)
        << launcher.output();
    if (victim_rank == 0) {
      // Rank 0 alone writes checkpoints, every step: the restart continued
      // from the last step the killed job printed, or the one before.
      const int64_t resumed = resumed_step(launcher.output());
      EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
          << "resumed at " << resumed << ", the killed job printed step " << last_printed << "\n"
          << launcher.output();
    }
    last_printed = step_lines(launcher.output()).back();
    std::printf("[          ] killed rank %d at step %lld\n", victim_rank, static_cast<long long>(last_printed));
  }
  const std::string finished = run_to_end(args);
  const int64_t resumed = resumed_step(finished);
  EXPECT_TRUE(resumed == last_printed || resumed == last_printed - 1)
      << "resumed at " << resumed << ", the killed job printed step " << last_printed << "\n" << finished;
  EXPECT_NE(finished.find("[rank 0] done: 3 epochs, 60 steps"), std::string::npos) << finished;
  expect_same_bytes(tmp.file("ref/model.safetensors"), tmp.file("out/model.safetensors"));
}

}  // namespace
}  // namespace dtrain
