// ChildProcess: real child processes for multi-process tests (transports,
// rendezvous, peer failures), in the manner of gloo's multiproc tests.
//
// The usual pattern: a test spawns its own binary (self_executable()) with
// --gtest_filter naming one DISABLED_ "child" test and environment variables
// saying which rank or role the child plays; the parent waits for the exit
// codes (a child's gtest failures make it exit non-zero) and may SIGKILL or
// SIGSTOP a child on cue (wait_for_line) to test failure detection.
//
// Guarantees: no child outlives its ChildProcess (the destructor SIGKILLs and
// reaps it) nor the test process (PR_SET_PDEATHSIG); every wait takes a
// Deadline. A child's stdout is captured (output()) and must be drained by
// wait_for_line()/wait(), which both do; its stderr is the parent's.
// Thread safety: one thread per ChildProcess. Throws std::system_error when
// fork, pipe or exec setup fails.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"

namespace dtrain::testing {

struct ExitStatus {
  bool exited = false;  // normal exit (then `code`), else killed by `signal`
  int code = 0;
  int signal = 0;
  bool ok() const { return exited && code == 0; }
  std::string describe() const;
};

class ChildProcess {
 public:
  // Starts argv[0] (a path) with argv and the parent's environment plus
  // `extra_env` (which wins on conflicts).
  static ChildProcess spawn(const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& extra_env);
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `sig` (SIGKILL, SIGSTOP, SIGCONT...) unless the child was reaped.
  void signal(int sig);
  // Reads the child's stdout until a line equal to `line`; false at EOF or
  // when `deadline` passes.
  bool wait_for_line(const std::string& line, Deadline deadline);
  // Reaps the child; nullopt if it is still running at `deadline`.
  std::optional<ExitStatus> wait(Deadline deadline);
  // Everything read from the child's stdout so far.
  const std::string& output() const { return output_; }
  // Reads what is available within `timeout_ms` into output(); false at EOF.
  bool read_some(int timeout_ms);

 private:
  ChildProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}
  void release();

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  bool reaped_ = false;
  std::optional<ExitStatus> status_;
  std::string output_;
  size_t scanned_ = 0;  // output_ up to here was searched for lines
};

// Path of the running executable (/proc/self/exe).
std::string self_executable();

// Spawns this test binary running only `test_name` ("Suite.DISABLED_Child"),
// with `env` added to its environment.
ChildProcess spawn_test_child(const std::string& test_name,
                              const std::map<std::string, std::string>& env);

}  // namespace dtrain::testing
