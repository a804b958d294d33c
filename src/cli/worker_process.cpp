#include "cli/worker_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/error.h"

namespace dtrain::cli::process {

namespace {

using Clock = std::chrono::steady_clock;

// The write end of the active run's self-pipe, -1 when no run is active. A
// signal handler can reach nothing but globals, hence this one file-scope
// variable; only SignalForwarding sets and clears it.
std::atomic<int> g_signal_pipe{-1};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void forward_to_pipe(int sig) {
  const int saved_errno = errno;
  const int fd = g_signal_pipe.load();
  if (fd >= 0) {
    const auto byte = static_cast<unsigned char>(sig);
    [[maybe_unused]] const ssize_t ignored = write(fd, &byte, 1);
  }
  errno = saved_errno;
}

// The child side of fork(): async-signal-safe calls only, no return.
[[noreturn]] void become_worker(const ExecImage& image, pid_t parent, int stdin_fd, int stdout_fd,
                                int stderr_fd, int status_fd) {
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  for (int sig : kForwardedSignals) sigaction(sig, &default_action, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);  // the launcher died before prctl
  if (dup2(stdin_fd, STDIN_FILENO) < 0 || dup2(stdout_fd, STDOUT_FILENO) < 0 ||
      dup2(stderr_fd, STDERR_FILENO) < 0) {
    const int e = errno;
    [[maybe_unused]] const ssize_t ignored = write(status_fd, &e, sizeof e);
    _exit(127);
  }
  // Descriptors the caller opened without O_CLOEXEC do not leak into workers.
  close_range(STDERR_FILENO + 1, ~0U, CLOSE_RANGE_CLOEXEC);
  execve(image.argp[0], image.argp.data(), image.envp.data());
  const int e = errno;
  [[maybe_unused]] const ssize_t ignored = write(status_fd, &e, sizeof e);
  _exit(127);
}

}  // namespace

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

Fd above_stdio(int fd) {
  if (fd < 0) throw_errno("pipe/open");
  if (fd > STDERR_FILENO) return Fd(fd);
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  const int saved = errno;
  close(fd);
  errno = saved;
  if (moved < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
  return Fd(moved);
}

Pipe make_pipe() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2");
  Pipe p;
  p.read = above_stdio(fds[0]);
  p.write = above_stdio(fds[1]);
  return p;
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw_errno("fcntl(O_NONBLOCK)");
}

SignalForwarding::SignalForwarding() {
  Pipe p = make_pipe();
  set_nonblocking(p.read.get());
  set_nonblocking(p.write.get());
  int expected = -1;
  if (!g_signal_pipe.compare_exchange_strong(expected, p.write.get())) {
    throw UsageError(
        "launcher: another Launcher::run() is active in this process; only one may catch "
        "SIGINT/SIGTERM at a time");
  }
  read_ = std::move(p.read);
  write_ = std::move(p.write);
  struct sigaction action {};
  action.sa_handler = forward_to_pipe;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (size_t i = 0; i < kForwardedSignals.size(); ++i) {
    sigaction(kForwardedSignals[i], &action, &previous_[i]);
  }
}

SignalForwarding::~SignalForwarding() {
  for (size_t i = 0; i < kForwardedSignals.size(); ++i) {
    sigaction(kForwardedSignals[i], &previous_[i], nullptr);
  }
  g_signal_pipe.store(-1);
}

std::vector<int> SignalForwarding::take() {
  std::vector<int> signals;
  unsigned char buffer[64];
  ssize_t n;
  while ((n = read(read_.get(), buffer, sizeof buffer)) > 0) {
    signals.insert(signals.end(), buffer, buffer + n);
  }
  return signals;
}

WorkerSet::~WorkerSet() {
  for (Worker& w : workers_) {
    if (!w.reaped && !w.abandoned) kill(-w.pid, SIGKILL);
  }
  const auto give_up = Clock::now() + kReapAfterKill;
  for (Worker& w : workers_) {
    while (!w.reaped && !w.abandoned) {
      int raw = 0;
      const pid_t r = waitpid(w.pid, &raw, WNOHANG);
      if (r == w.pid || (r < 0 && errno != EINTR) || Clock::now() >= give_up) break;
      pollfd p{w.pidfd.get(), POLLIN, 0};
      poll(&p, 1, 10);
    }
  }
}

void spawn_worker(WorkerSet& workers, int rank, const ExecImage& image, int devnull) {
  Pipe out = make_pipe();
  Pipe err = make_pipe();
  Pipe status = make_pipe();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw_errno(fmt::format("fork (worker rank {})", rank));
  if (pid == 0) {
    become_worker(image, parent, devnull, out.write.get(), err.write.get(), status.write.get());
  }
  setpgid(pid, pid);  // also done by the child; whichever runs first makes kill(-pid) valid
  Worker w;
  w.rank = rank;
  w.pid = pid;
  w.pidfd = Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  w.out = std::move(out.read);
  w.err = std::move(err.read);
  w.status.rank = rank;
  w.status.pid = pid;
  workers.add(std::move(w));  // from here the WorkerSet reaps it on every path
  out.write.reset();
  err.write.reset();
  status.write.reset();

  int exec_errno = 0;
  ssize_t n;
  while ((n = read(status.read.get(), &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  if (n > 0) {
    throw Error(fmt::format("launcher: cannot start worker rank {}: '{}': {}", rank, image.args[0],
                            std::strerror(exec_errno)));
  }
  set_nonblocking(workers.all().back().out.get());
  set_nonblocking(workers.all().back().err.get());
}

}  // namespace dtrain::cli::process
