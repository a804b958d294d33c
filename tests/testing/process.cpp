#include "testing/process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <system_error>
#include <utility>

extern char** environ;

namespace dtrain::testing {

namespace {

[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// How long one poll() may sleep while waiting for an exit: the child's exit
// closes its stdout (poll wakes at once) unless it passed the pipe on, so
// this only bounds the latency in that rare case.
constexpr int kExitPollMs = 20;

std::optional<ExitStatus> to_status(int raw) {
  ExitStatus s;
  if (WIFEXITED(raw)) {
    s.exited = true;
    s.code = WEXITSTATUS(raw);
    return s;
  }
  if (WIFSIGNALED(raw)) {
    s.signal = WTERMSIG(raw);
    return s;
  }
  return std::nullopt;  // stopped or continued: still alive
}

}  // namespace

std::string ExitStatus::describe() const {
  if (exited) return fmt::format("exited with code {}", code);
  return fmt::format("killed by signal {} ({})", signal, strsignal(signal));
}

ChildProcess ChildProcess::spawn(const std::vector<std::string>& argv,
                                 const std::map<std::string, std::string>& extra_env) {
  if (argv.empty()) throw std::invalid_argument("ChildProcess::spawn: empty argv");
  // Everything the child needs is built before fork: after it, in a
  // multi-threaded parent, the child may only make async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const std::string key = entry.substr(0, entry.find('='));
    if (!extra_env.contains(key)) env_strings.push_back(std::move(entry));
  }
  for (const auto& [key, value] : extra_env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    throw_errno("fork");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    dup2(fds[1], STDOUT_FILENO);          // the duplicate is not close-on-exec
    execve(argp[0], argp.data(), envp.data());
    _exit(127);
  }
  close(fds[1]);
  return ChildProcess(pid, fds[0]);
}

ChildProcess::~ChildProcess() { release(); }

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      stdout_fd_(std::exchange(other.stdout_fd_, -1)),
      reaped_(std::exchange(other.reaped_, true)),
      status_(std::move(other.status_)),
      output_(std::move(other.output_)),
      scanned_(other.scanned_) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    release();
    pid_ = std::exchange(other.pid_, -1);
    stdout_fd_ = std::exchange(other.stdout_fd_, -1);
    reaped_ = std::exchange(other.reaped_, true);
    status_ = std::move(other.status_);
    output_ = std::move(other.output_);
    scanned_ = other.scanned_;
  }
  return *this;
}

void ChildProcess::release() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);  // also ends a SIGSTOPped child
    int raw = 0;
    while (waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  if (stdout_fd_ >= 0) close(stdout_fd_);
  stdout_fd_ = -1;
}

void ChildProcess::signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

bool ChildProcess::read_some(int timeout_ms) {
  if (stdout_fd_ < 0) return false;
  pollfd p{stdout_fd_, POLLIN, 0};
  const int rc = poll(&p, 1, timeout_ms);
  if (rc < 0 && errno != EINTR) throw_errno("poll");
  if (rc <= 0) return true;
  char buffer[4096];
  const ssize_t n = read(stdout_fd_, buffer, sizeof buffer);
  if (n > 0) {
    output_.append(buffer, static_cast<size_t>(n));
    return true;
  }
  if (n < 0 && errno == EINTR) return true;
  close(stdout_fd_);
  stdout_fd_ = -1;
  return false;
}

bool ChildProcess::wait_for_line(const std::string& line, Deadline deadline) {
  while (true) {
    size_t end;
    while ((end = output_.find('\n', scanned_)) != std::string::npos) {
      const bool match = output_.compare(scanned_, end - scanned_, line) == 0;
      scanned_ = end + 1;
      if (match) return true;
    }
    if (deadline.expired()) return false;
    const auto left = deadline.remaining().count();
    if (!read_some(static_cast<int>(std::min<int64_t>(left, INT_MAX)))) return false;
  }
}

std::optional<ExitStatus> ChildProcess::wait(Deadline deadline) {
  if (status_) return status_;
  while (true) {
    int raw = 0;
    const pid_t r = waitpid(pid_, &raw, WNOHANG);
    if (r == pid_) {
      if (auto s = to_status(raw)) {
        reaped_ = true;
        while (read_some(0)) {
          if (stdout_fd_ < 0) break;
          pollfd p{stdout_fd_, POLLIN, 0};
          if (poll(&p, 1, 0) <= 0) break;
        }
        status_ = s;
        return status_;
      }
    } else if (r < 0 && errno != EINTR) {
      throw_errno("waitpid");
    }
    if (deadline.expired()) return std::nullopt;
    const int slice =
        static_cast<int>(std::min<int64_t>(deadline.remaining().count(), kExitPollMs));
    if (!read_some(slice) && slice > 0) {
      // Stdout closed: the child is exiting; poll waitpid at the same pace.
      pollfd none{-1, 0, 0};
      poll(&none, 0, slice);
    }
  }
}

std::string self_executable() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) throw_errno("readlink /proc/self/exe");
  return std::string(path, static_cast<size_t>(n));
}

ChildProcess spawn_test_child(const std::string& test_name,
                              const std::map<std::string, std::string>& env) {
  return ChildProcess::spawn({self_executable(), "--gtest_filter=" + test_name,
                              "--gtest_also_run_disabled_tests", "--gtest_brief=1"},
                             env);
}

}  // namespace dtrain::testing
