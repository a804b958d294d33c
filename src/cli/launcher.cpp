#include "cli/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <filesystem>
#include <system_error>
#include <utility>

#include "cli/worker_process.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/file_system.h"

extern char** environ;

namespace dtrain::cli {

namespace {

std::string failure_report_path(const std::string& status_dir, int slot) {
  return fmt::format("{}/failure-{}", status_dir, slot);
}

using process::above_stdio;
using process::ExecImage;
using process::Fd;
using process::kReapAfterKill;
using process::signal_name;
using process::SignalForwarding;
using process::spawn_worker;
using process::throw_errno;
using process::Worker;
using process::WorkerSet;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Longest line passed on whole; longer ones are split (bounds memory per pipe).
constexpr size_t kMaxLineBytes = 64 * 1024;
// Upper bound on one poll() sleep: exits are also noticed through pidfds at
// once; the tick only matters where pidfd_open is unavailable.
constexpr milliseconds kTick{100};
// Chunks read from one pipe when its worker has exited (bounds the drain of
// a pipe that a surviving process keeps filling).
constexpr int kMaxDrainChunks = 64;

std::string random_secret() {
  std::array<unsigned char, 32> bytes{};
  size_t filled = 0;
  while (filled < bytes.size()) {
    const ssize_t n = getrandom(bytes.data() + filled, bytes.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("getrandom");
    }
    filled += static_cast<size_t>(n);
  }
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

// A port that is free on `host` now: bound to port 0, read back, released.
// Nothing listened on it, so it is immediately bindable again (no TIME_WAIT).
int pick_free_port(const std::string& host) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
    throw UsageError(fmt::format(
        "launcher: coordinator host '{}' is not an IPv4 address (e.g. 127.0.0.1)", host));
  }
  Fd socket_fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_fd.is_open()) throw_errno("socket");
  if (bind(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    throw_errno(fmt::format("bind {}:0 (looking for a free coordinator port)", host));
  }
  socklen_t length = sizeof address;
  if (getsockname(socket_fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    throw_errno("getsockname");
  }
  return ntohs(address.sin_port);
}

int poll_timeout_ms(Clock::time_point wake) {
  const auto left = std::chrono::ceil<milliseconds>(wake - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

std::string list_ranks(const std::vector<const Worker*>& workers) {
  std::string text;
  for (const Worker* w : workers) {
    text += fmt::format("{}{} (pid {})", text.empty() ? "" : ", ", w->rank, w->pid);
  }
  return text;
}

// -------------------------------------------------------------- supervision

// The poll loop of one run: moves output, notices exits, stops the job.
class Supervisor {
 public:
  Supervisor(WorkerSet& workers, SignalForwarding& signals, const LaunchOptions& options,
             std::ostream& out, std::ostream& err, Logger& logger)
      : workers_(workers.all()),
        signals_(signals),
        options_(options),
        out_(out),
        err_(err),
        logger_(logger) {}

  // Returns when every worker was reaped (or abandoned) and the output
  // drained; sets timed_out() when `deadline` started the stop.
  void run(Deadline deadline);

  // Elastic mode: starts a new process for a slot (called from run()).
  // `since_failure` is how long ago the slot's failure was noticed.
  void set_respawn(std::function<void(int slot, double since_failure_s)> respawn) {
    respawn_ = std::move(respawn);
  }

  bool timed_out() const { return timed_out_; }
  std::optional<int> first_failed_rank() const { return first_failed_rank_; }
  const std::string& failure() const { return failure_; }
  // How the worker that stopped the job ended, if one did.
  const std::optional<WorkerExit>& first_failure() const { return first_failure_; }
  std::optional<Clock::time_point> failed_at() const { return failed_at_; }
  int interrupted_by() const { return interrupted_by_; }

 private:
  enum class Stream { kOut, kErr };

  std::vector<const Worker*> running() const {
    std::vector<const Worker*> r;
    for (const Worker& w : workers_) {
      if (!w.reaped && !w.abandoned) r.push_back(&w);
    }
    return r;
  }
  bool any_pipe_open() const {
    return std::any_of(workers_.begin(), workers_.end(),
                       [](const Worker& w) { return w.out.is_open() || w.err.is_open(); });
  }

  void wait_for_events(Clock::time_point wake);
  bool read_chunk(Worker& w, Stream stream);
  void drain(Worker& w);
  void emit(int rank, Stream stream, std::string_view line);
  void check_exits();
  void finish(Worker& w);
  // Elastic mode's handling of an ended worker (finish() reaped it).
  void finish_elastic(const Worker& w, const std::string& what);
  // Elastic mode: the slot's name in log lines.
  std::string slot_name(int slot) const;
  // Records the failure that stops the job (blaming `rank`) and stops it.
  void fail(int rank, const WorkerExit& status, const std::string& what, const std::string& why);
  // Non-elastic: the rank a failed worker's report blames (a peer that
  // stopped responding, still running) and the line that says so; else
  // `w` itself.
  std::pair<int, std::string> blame(const Worker& w) const;
  // Elastic mode: whether the job finished training (see Elastic::job_finished).
  bool job_finished() const;
  // Tells the processes still running after the job finished to exit.
  void release_stragglers();
  void begin_stop(int sig, const std::string& why);
  void handle_signals();
  void enforce_timers(Deadline deadline);

  std::vector<Worker>& workers_;
  SignalForwarding& signals_;
  const LaunchOptions& options_;
  std::ostream& out_;
  std::ostream& err_;
  Logger& logger_;
  std::vector<char> buffer_ = std::vector<char>(kMaxLineBytes);

  bool stopping_ = false;
  Clock::time_point kill_at_;                     // valid while stopping_
  std::optional<Clock::time_point> killed_at_;    // when SIGKILL went out
  std::optional<Clock::time_point> drain_until_;  // set once no worker runs
  bool timed_out_ = false;
  std::optional<int> first_failed_rank_;
  std::optional<WorkerExit> first_failure_;
  std::string failure_;
  std::optional<Clock::time_point> failed_at_;
  int interrupted_by_ = 0;

  // Elastic mode.
  std::function<void(int slot, double since_failure_s)> respawn_;
  // Slots to start again and when their failure was noticed, from finish().
  std::vector<std::pair<int, Clock::time_point>> respawn_queue_;
  int restarts_used_ = 0;
  std::vector<WorkerExit> lost_;   // failed workers, in order
  std::vector<bool> finished_ok_;  // by slot: its latest process exited 0
};

void Supervisor::run(Deadline deadline) {
  while (true) {
    handle_signals();
    check_exits();
    if (!stopping_ && respawn_) {
      for (const auto& [slot, failed] : std::exchange(respawn_queue_, {})) {
        respawn_(slot, std::chrono::duration<double>(Clock::now() - failed).count());
      }
    }
    enforce_timers(deadline);
    if (running().empty()) {
      if (!drain_until_) drain_until_ = Clock::now() + options_.output_drain_timeout;
      if (!any_pipe_open()) return;
      if (Clock::now() >= *drain_until_) {
        for (Worker& w : workers_) {
          if (w.out.is_open() || w.err.is_open()) {
            logger_.warn(
                "worker rank {} (pid {}) exited but its output is still held open after {} ms "
                "(by a process outside its process group?); no longer reading it",
                w.rank, w.pid, options_.output_drain_timeout.count());
            drain(w);
            w.out.reset();
            w.err.reset();
          }
        }
        return;
      }
    }
    Clock::time_point wake = Clock::now() + kTick;
    if (!stopping_ && !deadline.is_never()) wake = std::min(wake, deadline.at());
    if (stopping_ && !killed_at_) wake = std::min(wake, kill_at_);
    if (drain_until_) wake = std::min(wake, *drain_until_);
    wait_for_events(wake);
  }
}

void Supervisor::wait_for_events(Clock::time_point wake) {
  struct Source {
    Worker* worker;
    Stream stream;
  };
  std::vector<pollfd> fds{{signals_.fd(), POLLIN, 0}};
  std::vector<Source> sources{{nullptr, Stream::kOut}};
  for (Worker& w : workers_) {
    if (w.out.is_open()) {
      fds.push_back({w.out.get(), POLLIN, 0});
      sources.push_back({&w, Stream::kOut});
    }
    if (w.err.is_open()) {
      fds.push_back({w.err.get(), POLLIN, 0});
      sources.push_back({&w, Stream::kErr});
    }
    if (!w.reaped && w.pidfd.is_open()) {
      fds.push_back({w.pidfd.get(), POLLIN, 0});  // only wakes the loop; check_exits reaps
      sources.push_back({nullptr, Stream::kOut});
    }
  }
  const int ready = poll(fds.data(), fds.size(), poll_timeout_ms(wake));
  if (ready < 0) {
    if (errno == EINTR) return;
    throw_errno("poll");
  }
  for (size_t i = 1; i < fds.size(); ++i) {
    if (sources[i].worker != nullptr && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      read_chunk(*sources[i].worker, sources[i].stream);
    }
  }
}

// Reads what one pipe has (one chunk, so that a chatty worker cannot starve
// the others). Returns false when nothing more is available now.
bool Supervisor::read_chunk(Worker& w, Stream stream) {
  Fd& fd = stream == Stream::kOut ? w.out : w.err;
  std::string& partial = stream == Stream::kOut ? w.out_partial : w.err_partial;
  if (!fd.is_open()) return false;
  const ssize_t n = read(fd.get(), buffer_.data(), buffer_.size());
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
  if (n <= 0) {  // end of file (or a read error, treated alike)
    if (!partial.empty()) emit(w.rank, stream, partial);
    partial.clear();
    fd.reset();
    return false;
  }
  partial.append(buffer_.data(), static_cast<size_t>(n));
  size_t start = 0;
  size_t newline;
  while ((newline = partial.find('\n', start)) != std::string::npos) {
    emit(w.rank, stream, std::string_view(partial).substr(start, newline - start));
    start = newline + 1;
  }
  while (partial.size() - start >= kMaxLineBytes) {
    emit(w.rank, stream, std::string_view(partial).substr(start, kMaxLineBytes));
    start += kMaxLineBytes;
  }
  partial.erase(0, start);
  return true;
}

void Supervisor::drain(Worker& w) {
  for (int i = 0; i < kMaxDrainChunks && read_chunk(w, Stream::kOut); ++i) {
  }
  for (int i = 0; i < kMaxDrainChunks && read_chunk(w, Stream::kErr); ++i) {
  }
}

void Supervisor::emit(int rank, Stream stream, std::string_view line) {
  std::ostream& os = stream == Stream::kOut ? out_ : err_;
  const std::string text = fmt::format("[rank {}] {}\n", rank, line);
  os.write(text.data(), static_cast<std::streamsize>(text.size()));
  os.flush();
}

void Supervisor::check_exits() {
  for (Worker& w : workers_) {
    if (w.reaped || w.abandoned) continue;
    siginfo_t info{};
    // WNOWAIT: the exited worker stays a zombie, so its pid (= its process
    // group id) cannot be reused while finish() signals the group.
    if (waitid(P_PID, static_cast<id_t>(w.pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      throw_errno(fmt::format("waitid (worker rank {}, pid {})", w.rank, w.pid));
    }
    if (info.si_pid == w.pid) finish(w);
  }
}

void Supervisor::finish(Worker& w) {
  kill(-w.pid, SIGKILL);  // whatever the worker left running in its group
  drain(w);               // its last words come before the launcher's report
  int raw = 0;
  while (waitpid(w.pid, &raw, 0) < 0) {
    if (errno != EINTR) throw_errno(fmt::format("waitpid (worker rank {})", w.rank));
  }
  w.reaped = true;
  w.pidfd.reset();
  w.status.exited = WIFEXITED(raw);
  w.status.code = WIFEXITED(raw) ? WEXITSTATUS(raw) : 0;
  w.status.signal = WIFSIGNALED(raw) ? WTERMSIG(raw) : 0;

  if (options_.elastic) {
    finish_elastic(w, fmt::format("{} (pid {}) {}", slot_name(w.rank), w.pid, w.status.describe()));
    return;
  }
  const std::string what =
      fmt::format("worker rank {} (pid {}) {}", w.rank, w.pid, w.status.describe());
  if (w.status.ok()) {
    logger_.debug("{}", what);
  } else if (stopping_) {
    logger_.info("{} while the job was stopping", what);
  } else {
    const auto [blamed, line] = blame(w);
    fail(blamed, w.status, line, fmt::format("worker rank {} failed", blamed));
  }
}

void Supervisor::fail(int rank, const WorkerExit& status, const std::string& what,
                      const std::string& why) {
  first_failed_rank_ = rank;
  first_failure_ = status;
  failed_at_ = Clock::now();
  failure_ = what;
  logger_.error("{}", what);
  begin_stop(SIGTERM, why);
}

std::pair<int, std::string> Supervisor::blame(const Worker& w) const {
  const std::string own =
      fmt::format("worker rank {} (pid {}) {}", w.rank, w.pid, w.status.describe());
  if (options_.status_dir.empty()) return {w.rank, own};
  std::optional<FailureReport> report;
  try {
    report = read_failure_report(options_.status_dir, w.rank);
  } catch (const std::exception& e) {
    logger_.debug("worker rank {}: its failure report is unreadable: {}", w.rank, e.what());
  }
  if (!report || report->culprit == w.rank || report->culprit < 0 ||
      report->culprit >= static_cast<int>(workers_.size())) {
    return {w.rank, own};
  }
  const Worker* culprit = nullptr;
  for (const Worker& other : workers_) {
    if (other.rank == report->culprit && !other.reaped) culprit = &other;
  }
  if (culprit == nullptr) return {w.rank, own};
  return {culprit->rank,
          fmt::format("worker rank {} (pid {}) stopped responding or failed: {} because of it "
                      "({})",
                      culprit->rank, culprit->pid, own, report->message)};
}

bool Supervisor::job_finished() const {
  const LaunchOptions::Elastic& elastic = *options_.elastic;
  if (elastic.job_finished) return elastic.job_finished();
  if (elastic.essential_slots == 0) return false;
  for (int slot = 0; slot < elastic.essential_slots; ++slot) {
    if (!finished_ok_[static_cast<size_t>(slot)]) return false;
  }
  return true;
}

void Supervisor::release_stragglers() {
  const auto left = running();
  if (left.empty()) return;
  stopping_ = true;
  kill_at_ = Clock::now() + options_.stop_grace;
  for (const Worker* w : left) {
    logger_.warn(
        "{} (pid {}) still runs after the job finished training without it (it was "
        "dropped, or silent past the heartbeat timeout): telling it to exit ({}), "
        "SIGKILL after {} ms",
        slot_name(w->rank), w->pid, signal_name(kJobFinishedSignal), options_.stop_grace.count());
    kill(w->pid, kJobFinishedSignal);
    kill(w->pid, SIGCONT);  // a stopped one hears it now
  }
}

std::string Supervisor::slot_name(int slot) const {
  const LaunchOptions::Elastic& elastic = *options_.elastic;
  return elastic.slot_name ? elastic.slot_name(slot) : fmt::format("worker slot {}", slot);
}

void Supervisor::finish_elastic(const Worker& w, const std::string& what) {
  const LaunchOptions::Elastic& elastic = *options_.elastic;
  int left = 0;  // running workers
  for (const Worker* r : running()) left += r->rank >= elastic.first_worker_slot ? 1 : 0;
  if (elastic.on_worker_ended) elastic.on_worker_ended(w.status, left);
  if (finished_ok_.empty()) finished_ok_.assign(workers_.size(), false);
  if (static_cast<size_t>(w.rank) < finished_ok_.size()) {
    finished_ok_[static_cast<size_t>(w.rank)] = w.status.ok();
  }
  if (w.status.ok()) {
    logger_.debug("{}", what);
    if (!stopping_ && job_finished()) release_stragglers();
    return;
  }
  if (stopping_) {
    logger_.info("{} while the job was stopping", what);
    return;
  }
  lost_.push_back(w.status);
  const bool replace = restarts_used_ < elastic.max_restarts;
  const bool essential = w.rank < elastic.essential_slots;
  if (essential && !replace) {
    fail(w.rank, w.status,
         fmt::format("{}; the job cannot go on without it and no restart is left (max_restarts = "
                     "{}): stopping the job",
                     what, elastic.max_restarts),
         fmt::format("{} failed", slot_name(w.rank)));
    return;
  }
  if (!essential && left + (replace ? 1 : 0) < elastic.min_workers) {
    std::string lost;
    for (const WorkerExit& e : lost_) {
      lost += fmt::format(
          "{}{} (pid {}) {}", lost.empty() ? "" : ", ",
          elastic.slot_name ? elastic.slot_name(e.rank) : fmt::format("slot {}", e.rank), e.pid,
          e.describe());
    }
    fail(w.rank, w.status,
         fmt::format("{}; {} worker(s) left, fewer than min_workers = {}: stopping the job "
                     "(lost: {})",
                     what, left, elastic.min_workers, lost),
         fmt::format("too few workers after {} failed", slot_name(w.rank)));
    return;
  }
  if (essential) {
    ++restarts_used_;
    respawn_queue_.emplace_back(w.rank, Clock::now());
    logger_.warn("{}; starting its replacement (restart {} of {})", what, restarts_used_,
                 elastic.max_restarts);
    return;
  }
  if (replace) {
    ++restarts_used_;
    respawn_queue_.emplace_back(w.rank, Clock::now());
    logger_.warn("{}; continuing with {} worker(s); starting {} (restart {} of {})", what, left,
                 elastic.slot_name ? elastic.slot_name(w.rank) + " again"
                                   : fmt::format("a new worker for slot {}", w.rank),
                 restarts_used_, elastic.max_restarts);
  } else {
    logger_.warn("{}; continuing with {} worker(s)", what, left);
  }
}

void Supervisor::begin_stop(int sig, const std::string& why) {
  stopping_ = true;
  if (options_.elastic && options_.elastic->on_stopping) options_.elastic->on_stopping(why);
  kill_at_ = Clock::now() + options_.stop_grace;
  const auto left = running();
  if (left.empty()) return;
  logger_.warn("{}: sending {} to the {} running worker(s), SIGKILL after {} ms: rank {}", why,
               signal_name(sig), left.size(), options_.stop_grace.count(), list_ranks(left));
  for (const Worker* w : left) {
    kill(-w->pid, sig);
    kill(-w->pid, SIGCONT);  // a stopped worker acts on it now, not at the SIGKILL
  }
}

void Supervisor::handle_signals() {
  for (int sig : signals_.take()) {
    if (interrupted_by_ == 0) interrupted_by_ = sig;  // also while stopping: no restart then
    if (stopping_) {
      logger_.info("received {} while stopping; the workers already got theirs", signal_name(sig));
      continue;
    }
    begin_stop(sig, fmt::format("launcher received {}", signal_name(sig)));
  }
}

void Supervisor::enforce_timers(Deadline deadline) {
  const auto now = Clock::now();
  if (!stopping_ && deadline.expired()) {
    timed_out_ = true;
    begin_stop(SIGTERM, "launch deadline passed");
  }
  if (stopping_ && !killed_at_ && now >= kill_at_) {
    killed_at_ = now;
    const auto left = running();
    if (!left.empty()) {
      logger_.warn(
          "worker(s) still running {} ms after being asked to stop; sending SIGKILL: rank {}",
          options_.stop_grace.count(), list_ranks(left));
    }
    for (const Worker* w : left) kill(-w->pid, SIGKILL);
  }
  if (killed_at_ && now >= *killed_at_ + kReapAfterKill) {
    for (Worker& w : workers_) {
      if (w.reaped || w.abandoned) continue;
      w.abandoned = true;
      logger_.error(
          "worker rank {} (pid {}) has not ended {} ms after SIGKILL (uninterruptible "
          "sleep?); leaving it",
          w.rank, w.pid, kReapAfterKill.count());
    }
  }
}

}  // namespace

std::string WorkerExit::describe() const {
  if (exited) return fmt::format("exited with code {}", code);
  return fmt::format("was killed by signal {} ({})", signal, signal_name(signal));
}

Launcher::Launcher(LaunchOptions options, std::ostream& out, std::ostream& err, Logger& logger)
    : options_(std::move(options)), out_(out), err_(err), logger_(logger) {
  if (options_.argv.empty() || options_.argv[0].empty()) {
    throw UsageError("launcher: the worker command line is empty (argv[0] must be a path)");
  }
  if (options_.workers < 1) {
    throw UsageError(
        fmt::format("launcher: workers is {}; it must be at least 1", options_.workers));
  }
  if (options_.stop_grace.count() < 0 || options_.output_drain_timeout.count() < 0) {
    throw UsageError(fmt::format(
        "launcher: stop_grace ({} ms) and output_drain_timeout ({} ms) must not be negative",
        options_.stop_grace.count(), options_.output_drain_timeout.count()));
  }
  if (options_.elastic &&
      (options_.elastic->essential_slots < 0 ||
       options_.elastic->essential_slots > options_.workers ||
       options_.elastic->first_worker_slot < 0 ||
       options_.elastic->first_worker_slot > options_.elastic->essential_slots ||
       options_.elastic->min_workers < 1 ||
       options_.elastic->min_workers > options_.workers - options_.elastic->first_worker_slot ||
       options_.elastic->max_restarts < 0)) {
    throw UsageError(fmt::format(
        "launcher: elastic essential_slots {} must be in 0..{}, first_worker_slot {} in 0..{}, "
        "min_workers {} in 1..{} (the workers) and max_restarts {} must not be negative",
        options_.elastic->essential_slots, options_.workers, options_.elastic->first_worker_slot,
        options_.elastic->essential_slots, options_.elastic->min_workers,
        options_.workers - options_.elastic->first_worker_slot, options_.elastic->max_restarts));
  }
  if (options_.coordinator_port < 0 || options_.coordinator_port > 65535) {
    throw UsageError(fmt::format("launcher: coordinator port {} is outside 0..65535",
                                 options_.coordinator_port));
  }
}

LaunchResult Launcher::run(Deadline deadline) {
  const auto started = Clock::now();
  const int port = options_.coordinator_port != 0 ? options_.coordinator_port
                                                  : pick_free_port(options_.coordinator_host);
  LaunchResult result;
  result.coordinator = fmt::format("{}:{}", options_.coordinator_host, port);

  std::map<std::string, std::string> environment = options_.environment;
  environment["DTRAIN_WORLD_SIZE"] = std::to_string(options_.workers);
  environment["DTRAIN_COORDINATOR"] = result.coordinator;
  if (environment["DTRAIN_JOB_SECRET"].empty()) environment["DTRAIN_JOB_SECRET"] = random_secret();
  std::vector<int> started_per_slot(static_cast<size_t>(options_.workers), 0);
  // Reports of an earlier attempt (run_with_restarts) must not blame anyone now.
  for (int slot = 0; slot < options_.workers && !options_.status_dir.empty(); ++slot) {
    std::error_code ignored;
    std::filesystem::remove(failure_report_path(options_.status_dir, slot), ignored);
  }

  const Fd devnull = above_stdio(open("/dev/null", O_RDONLY | O_CLOEXEC));
  SignalForwarding signals;  // before the first fork: a signal can only arrive once it is caught
  WorkerSet workers;         // declared after `signals`: reaped before the handlers go
  auto start = [&](int rank) {
    environment["DTRAIN_RANK"] = std::to_string(rank);
    environment["DTRAIN_LOCAL_RANK"] = std::to_string(rank);
    if (options_.elastic) {
      int& started = started_per_slot[static_cast<size_t>(rank)];
      environment["DTRAIN_RESTART_COUNT"] = std::to_string(started++);
      if (options_.elastic->on_worker_starting) options_.elastic->on_worker_starting(rank);
    }
    spawn_worker(workers, rank, ExecImage(options_.argv, environment), devnull.get());
  };
  for (int rank = 0; rank < options_.workers; ++rank) start(rank);
  std::vector<const Worker*> started_workers;
  for (const Worker& w : workers.all()) started_workers.push_back(&w);
  logger_.info("started {} worker(s), coordinator {}: rank {}", options_.workers,
               result.coordinator, list_ranks(started_workers));
  if (options_.on_started) options_.on_started(result.coordinator);

  Supervisor supervisor(workers, signals, options_, out_, err_, logger_);
  if (options_.elastic) {
    supervisor.set_respawn([&](int slot, double since_failure_s) {
      start(slot);
      const Worker& w = workers.all().back();
      if (options_.elastic->slot_name) {
        logger_.info("started {} again (pid {}) {:.3f} s after its failure was noticed",
                     options_.elastic->slot_name(slot), w.pid, since_failure_s);
      } else {
        logger_.info(
            "started a new worker for slot {} (pid {}); it joins the group at the next "
            "step boundary",
            slot, w.pid);
      }
    });
  }
  supervisor.run(deadline);

  for (const Worker& w : workers.all()) result.workers.push_back(w.status);
  result.first_failed_rank = supervisor.first_failed_rank();
  result.failure = supervisor.failure();
  result.failed_at = supervisor.failed_at();
  result.interrupted_by = supervisor.interrupted_by();
  if (supervisor.timed_out()) {
    throw TimeoutError(-1, "launcher",
                       std::chrono::duration_cast<milliseconds>(Clock::now() - started),
                       fmt::format("{} worker(s) to exit", options_.workers));
  }
  if (supervisor.first_failure()) {
    const WorkerExit& failed = *supervisor.first_failure();
    result.exit_code = failed.exited ? failed.code : 1;
  } else if (result.interrupted_by != 0) {
    result.exit_code = 128 + result.interrupted_by;
  }
  return result;
}

LaunchResult run_with_restarts(const LaunchOptions& options, int max_restarts, std::ostream& out,
                               std::ostream& err, Logger& logger, Deadline deadline) {
  if (max_restarts < 0) {
    throw UsageError(
        fmt::format("launcher: max_restarts is {}; it must be at least 0", max_restarts));
  }
  LaunchResult result = Launcher(options, out, err, logger).run(deadline);
  for (int restart = 1; restart <= max_restarts; ++restart) {
    if (!result.first_failed_rank || result.interrupted_by != 0) break;
    const WorkerExit failed = result.workers[static_cast<size_t>(*result.first_failed_rank)];
    logger.warn("{}; restarting the job from its last checkpoint (restart {} of {})",
                result.failure.empty() ? fmt::format("worker rank {} (pid {}) {}", failed.rank,
                                                     failed.pid, failed.describe())
                                       : result.failure,
                restart, max_restarts);
    const Clock::time_point failed_at = result.failed_at.value_or(Clock::now());
    LaunchOptions again = options;
    again.on_started = [&](const std::string& coordinator) {
      logger.info(
          "restart {} of {}: the workers were started {:.3f} s after worker rank {} failed "
          "(recovery until their start; training resumes from the checkpoint next)",
          restart, max_restarts, std::chrono::duration<double>(Clock::now() - failed_at).count(),
          failed.rank);
      if (options.on_started) options.on_started(coordinator);
    };
    result = Launcher(std::move(again), out, err, logger).run(deadline);
  }
  return result;
}

std::string random_job_secret() { return random_secret(); }

void write_failure_report(const std::string& status_dir, int slot,
                          const FailureReport& report) noexcept {
  try {
    std::string message = report.message;
    std::replace(message.begin(), message.end(), '\n', ' ');
    io::write_file_atomic(io::default_file_system(), failure_report_path(status_dir, slot),
                          fmt::format("{}\n{}\n", report.culprit, message));
  } catch (...) {
    // Lost: the launcher then blames the worker that exited (see the header).
  }
}

std::optional<FailureReport> read_failure_report(const std::string& status_dir, int slot) {
  const std::string path = failure_report_path(status_dir, slot);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const std::string text = io::read_regular_file(path, 64 * 1024, "a worker's failure report");
  const size_t eol = text.find('\n');
  if (eol == std::string::npos) return std::nullopt;
  FailureReport report;
  const std::string culprit = text.substr(0, eol);
  const auto [end, ec2] =
      std::from_chars(culprit.data(), culprit.data() + culprit.size(), report.culprit);
  if (ec2 != std::errc() || end != culprit.data() + culprit.size()) return std::nullopt;
  report.message = text.substr(eol + 1);
  while (!report.message.empty() && report.message.back() == '\n') report.message.pop_back();
  return report;
}

std::map<std::string, std::string> current_environment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    const size_t equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)));
  }
  return env;
}

std::string self_executable() {
  std::array<char, PATH_MAX> path{};
  const ssize_t n = readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) throw_errno("readlink /proc/self/exe");
  return std::string(path.data(), static_cast<size_t>(n));
}

}  // namespace dtrain::cli
