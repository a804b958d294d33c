// Helpers of the fault-tolerance tests (restart, elastic, ps failures): a
// small synthetic job that checkpoints every step, the dtrain executable
// started as a child process (stdout and stderr captured together), its
// progress lines read back, and files compared byte for byte.
// Every wait takes a Deadline; failures are reported through GoogleTest
// (EXPECT_*/ADD_FAILURE), never thrown. Single-threaded; header-only.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain::ft_test {

// 3 epochs of 20 steps (60 in all) on 1200 synthetic samples, a checkpoint
// every step and a progress line every step; a run takes well under a second.
inline const std::string kJob = testing::TestJob()
                                    .name("restart")
                                    .seed(3)
                                    .synthetic(1200, 10, 3)
                                    .mlp({32})
                                    .optimizer("adam", 0.01)
                                    .set("schedule.type", "\"cosine\"")
                                    .set("schedule.warmup_steps", "5")
                                    .epochs(3)
                                    .batch(50)
                                    .set("train.log_every_steps", "1")
                                    .set("train.checkpoint_every_steps", "1")
                                    .set("train.keep_checkpoints", "2")
                                    .toml();

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Fails naming the first differing byte unless the two files are equal.
inline void expect_same_bytes(const std::string& a, const std::string& b) {
  ASSERT_TRUE(std::filesystem::exists(a)) << a;
  ASSERT_TRUE(std::filesystem::exists(b)) << b;
  const std::string x = read_bytes(a), y = read_bytes(b);
  if (x == y) return;
  size_t i = 0;
  while (i < x.size() && i < y.size() && x[i] == y[i]) ++i;
  ADD_FAILURE() << a << " (" << x.size() << " bytes) and " << b << " (" << y.size()
                << " bytes) differ from byte " << i;
}

// dtrain with `args`, its stderr merged into the captured stdout; the child's
// pid is dtrain's own (the shell execs it).
// `env` is added to the environment, with OPENBLAS_NUM_THREADS=1.
inline testing::ChildProcess start_dtrain(const std::vector<std::string>& args,
                                          std::map<std::string, std::string> env = {}) {
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  env["OPENBLAS_NUM_THREADS"] = "1";
  return testing::ChildProcess::spawn(argv, env);
}

// Runs dtrain to the end; the output when it exits 0, a failure otherwise.
inline std::string run_to_end(const std::vector<std::string>& args) {
  using namespace std::chrono_literals;
  testing::ChildProcess run = start_dtrain(args);
  const std::optional<testing::ExitStatus> status = run.wait(Deadline::after(240s));
  EXPECT_TRUE(status.has_value()) << "dtrain did not finish: " << run.output();
  EXPECT_TRUE(status && status->ok()) << (status ? status->describe() : "") << "\n" << run.output();
  return run.output();
}

// The global step numbers of the plain progress lines in `output`
// ("epoch 1 step 3/20 (global 3): ..."), in order.
inline std::vector<int64_t> step_lines(const std::string& output) {
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

// Reads until `count` progress lines arrived after output offset `from`;
// false at EOF or the deadline.
inline bool wait_for_steps(testing::ChildProcess& child, size_t count, Deadline deadline,
                           size_t from = 0) {
  auto arrived = [&] { return step_lines(child.output().substr(from)).size() >= count; };
  while (!arrived()) {
    if (deadline.expired() || !child.read_some(100)) return arrived();
  }
  return true;
}

// The step in the first "resumed from <path> at step S: ..." in `output`
// at or after `from`; -1 if absent.
inline int64_t resumed_step(const std::string& output, size_t from = 0) {
  const size_t at = output.find("resumed from ", from);
  if (at == std::string::npos) return -1;
  const size_t s = output.find(" at step ", at);
  if (s == std::string::npos) return -1;
  return std::stoll(output.substr(s + 9));
}

struct JobRun {
  std::optional<testing::ExitStatus> status;
  std::string output;
};

// dtrain with `args` and `env` (stderr merged into stdout, one OpenBLAS
// thread), to the end or 240 s.
inline JobRun run_job(const std::vector<std::string>& args,
                      std::map<std::string, std::string> env) {
  using namespace std::chrono_literals;
  testing::ChildProcess child = start_dtrain(args, std::move(env));
  JobRun run;
  run.status = child.wait(Deadline::after(240s));
  run.output = child.output();
  return run;
}

// The final test accuracy in percent from "done: ... test accuracy 97.10%".
inline bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A ps job's stop line, checked: `output` holds a line with `stop` (the
// launcher's "no live copy is left of the range..." up to the first pid),
// that line names every entry of `then` (the rest of the holders, the
// ending), and the job wrote no model into `out`.
inline void expect_stop_naming(const std::string& output, const std::string& stop,
                               const std::vector<std::string>& then, const std::string& out) {
  const size_t at = output.find(stop);
  ASSERT_NE(at, std::string::npos) << output;
  const std::string rest = output.substr(at, output.find('\n', at) - at);
  for (const std::string& part : then) EXPECT_TRUE(has(rest, part)) << rest;
  EXPECT_FALSE(std::filesystem::exists(out + "/model.safetensors"));
}

inline double final_accuracy(const std::string& output) {
  const size_t at = output.find("test accuracy ");
  if (at == std::string::npos) {
    ADD_FAILURE() << "no final accuracy in: " << output;
    return -1.0;
  }
  return std::stod(output.substr(at + 14));
}

// Where scripts/fetch_mnist.sh puts MNIST.
inline std::string mnist_dir() { return std::string(DTRAIN_SOURCE_DIR) + "/data/mnist"; }

inline bool have_mnist() {
  return std::filesystem::exists(mnist_dir() + "/train-images-idx3-ubyte");
}

// Reads the child's output until `text` appears; false at EOF or the deadline.
inline bool wait_for_text(testing::ChildProcess& child, const std::string& text,
                          Deadline deadline) {
  while (!has(child.output(), text)) {
    if (deadline.expired() || !child.read_some(100)) return has(child.output(), text);
  }
  return true;
}

// The launcher's worker processes, ascending pid (rank order: rank r starts
// before rank r + 1).
inline std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> children;
  for (pid_t child; in >> child;) children.push_back(child);
  std::sort(children.begin(), children.end());
  return children;
}

}  // namespace dtrain::ft_test
