// The process plumbing of cli/launcher.cpp (internal to the cli module):
// owned descriptors and pipes, the SIGINT/SIGTERM self-pipe, and starting a
// worker process (fork + execve, its own process group, stdout and stderr on
// pipes, SIGKILL when the launcher dies) with the set that reaps every worker
// on every exit path. Contracts as in launcher.h; errors are std::system_error
// for failed system calls and dtrain::Error for a worker that cannot be
// started. Thread safety: the launcher's thread only.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "cli/launcher.h"

namespace dtrain::cli::process {

// How long the kernel gets to end a SIGKILLed worker (one stuck in
// uninterruptible sleep is then left to init).
inline constexpr std::chrono::milliseconds kReapAfterKill{10000};

[[noreturn]] void throw_errno(const std::string& what);

// "SIGKILL", or "signal N" for one without a name.
std::string signal_name(int sig);

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A close-on-exec descriptor numbered 3 or above, so that a child's dup2()
// onto 0, 1 and 2 can never overwrite another of its descriptors (a launcher
// started with a closed stdin or stdout would otherwise get pipes there).
// Takes `fd` (closing it when it had to be moved); throws for fd < 0.
Fd above_stdio(int fd);

struct Pipe {
  Fd read;
  Fd write;
};

// A close-on-exec pipe, both ends numbered 3 or above.
Pipe make_pipe();
void set_nonblocking(int fd);

inline constexpr std::array<int, 2> kForwardedSignals = {SIGINT, SIGTERM};

// Catches SIGINT and SIGTERM for its lifetime and turns them into bytes on a
// pipe the supervision loop polls; restores the previous dispositions. Only
// one may exist per process (UsageError otherwise).
class SignalForwarding {
 public:
  SignalForwarding();
  ~SignalForwarding();
  SignalForwarding(const SignalForwarding&) = delete;
  SignalForwarding& operator=(const SignalForwarding&) = delete;

  int fd() const { return read_.get(); }
  // The signals received since the last call, oldest first.
  std::vector<int> take();

 private:
  Fd read_;
  Fd write_;
  std::array<struct sigaction, kForwardedSignals.size()> previous_{};
};

struct Worker {
  int rank = 0;
  pid_t pid = -1;  // also its process group id
  Fd pidfd;        // readable once the worker exited; closed when unavailable
  Fd out;          // read ends of its stdout and stderr; closed at end-of-file
  Fd err;
  std::string out_partial;  // bytes after the last '\n'
  std::string err_partial;
  bool reaped = false;
  bool abandoned = false;  // did not end within kReapAfterKill of SIGKILL
  WorkerExit status;
};

// Owns the started workers. The destructor is the cleanup of every exit path:
// it SIGKILLs the process group of each worker still running and reaps it,
// waiting at most kReapAfterKill in all.
class WorkerSet {
 public:
  WorkerSet() = default;
  WorkerSet(const WorkerSet&) = delete;
  WorkerSet& operator=(const WorkerSet&) = delete;
  ~WorkerSet();

  std::vector<Worker>& all() { return workers_; }
  void add(Worker w) { workers_.push_back(std::move(w)); }

 private:
  std::vector<Worker> workers_;
};

// Everything execve needs, built before fork: the child of a multi-threaded
// parent may only make async-signal-safe calls.
struct ExecImage {
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::vector<char*> argp;
  std::vector<char*> envp;

  ExecImage(std::vector<std::string> a, const std::map<std::string, std::string>& environment)
      : args(std::move(a)) {
    for (const auto& [key, value] : environment) env.push_back(key + "=" + value);
    for (auto& s : args) argp.push_back(s.data());
    argp.push_back(nullptr);
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
  }
};

// Starts one worker (stdin from `devnull`, default SIGINT/SIGTERM, an empty
// signal mask, its own process group, PR_SET_PDEATHSIG SIGKILL) and adds it to
// `workers`; returns once it has exec'd (the status pipe closes on exec) or
// throws when it could not. Its pipes are non-blocking.
void spawn_worker(WorkerSet& workers, int rank, const ExecImage& image, int devnull);

}  // namespace dtrain::cli::process
