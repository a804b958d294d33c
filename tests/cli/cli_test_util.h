// Helpers of the tests that run the dtrain executable (DTRAIN_BINARY, set by
// tests/cli/CMakeLists.txt) as a child process.
// Thread safety: none needed; each test calls them from its own thread.
// Blocking: run_dtrain() waits for the child, at most 240 s (then the test
// fails, naming what the child printed).
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "testing/process.h"

namespace dtrain::testing {

struct CliRun {
  ExitStatus status;
  std::string output;  // stdout and stderr, interleaved as written
};

// Runs `dtrain args...` with one BLAS thread and `env` added to the
// environment (test hooks such as DTRAIN_TEST_COMPUTE_SECONDS, which the
// launcher passes on to its workers) and returns how it ended.
inline CliRun run_dtrain(std::vector<std::string> args,
                         std::map<std::string, std::string> env = {}) {
  // Through sh so that stderr (where logs and errors go) is captured too.
  args.insert(args.begin(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY});
  env.emplace("OPENBLAS_NUM_THREADS", "1");
  ChildProcess child = ChildProcess::spawn(args, env);
  std::optional<ExitStatus> status = child.wait(Deadline::after(std::chrono::seconds(240)));
  EXPECT_TRUE(status.has_value()) << "dtrain did not finish: " << child.output();
  return {status.value_or(ExitStatus{}), child.output()};
}

// Starts `dtrain train JOB --output OUT --workers 2` for ever (100,000
// epochs), its stderr merged into the captured stdout; the test stops it.
// TMPDIR is OUT's parent (the test's folder), so the launcher's run folder
// and its workers' sockets go with the test's folder even when the test
// SIGKILLs the launcher (which then cannot remove them).
inline ChildProcess start_endless_job(const std::string& job, const std::string& out) {
  return ChildProcess::spawn(
      {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY, "train", job, "--output", out,
       "--workers", "2", "--set", "train.epochs=100000"},
      {{"OPENBLAS_NUM_THREADS", "1"},
       {"TMPDIR", std::filesystem::path(out).parent_path().string()}});
}

// The ipc socket files anywhere below `folder` (a job's TMPDIR: a launcher
// or an etcd agent removes its private socket folder when it ends, so none
// is left there by a worker it started, even a killed one).
inline std::vector<std::string> socket_files(const std::string& folder) {
  std::vector<std::string> sockets;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(folder, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_socket(ec)) sockets.push_back(it->path().string());
  }
  return sockets;
}

// Reads the child's output until it contains `text` (within 120 s); false
// at EOF or the deadline.
inline bool wait_for_output(ChildProcess& child, const std::string& text) {
  const Deadline deadline = Deadline::after(std::chrono::seconds(120));
  while (child.output().find(text) == std::string::npos && !deadline.expired()) {
    if (!child.read_some(1000)) break;
  }
  return child.output().find(text) != std::string::npos;
}

// The pid of a one-worker agent's worker, from its launcher's "started 1
// worker(s), ...: rank 0 (pid N)" line; -1 when absent.
inline pid_t agent_worker_pid(const ChildProcess& agent) {
  const std::string text = agent.output();
  const size_t line = text.find("started 1 worker(s)");
  if (line == std::string::npos) return -1;
  const size_t pid = text.find("(pid ", line);
  if (pid == std::string::npos) return -1;
  return static_cast<pid_t>(std::stol(text.substr(pid + 5)));
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

}  // namespace dtrain::testing
