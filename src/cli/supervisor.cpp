#include "cli/supervisor.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "core/error.h"

namespace dtrain::cli {

namespace {

using process::Fd;
using process::kReapAfterKill;
using process::signal_name;
using process::throw_errno;
using process::Worker;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Upper bound on one poll() sleep: exits are also noticed through pidfds at
// once; the tick only matters where pidfd_open is unavailable.
constexpr milliseconds kTick{100};
// Chunks read from one pipe when its worker has exited (bounds the drain of
// a pipe that a surviving process keeps filling).
constexpr int kMaxDrainChunks = 64;

int poll_timeout_ms(Clock::time_point wake) {
  const auto left = std::chrono::ceil<milliseconds>(wake - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

}  // namespace

std::string list_ranks(const std::vector<const Worker*>& workers) {
  std::string text;
  for (const Worker* w : workers) {
    text += fmt::format("{}{} (pid {})", text.empty() ? "" : ", ", w->rank, w->pid);
  }
  return text;
}

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
    if (!stopping_ && release_at_) wake = std::min(wake, *release_at_);
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
  if (options_.on_process_exited) {
    WorkerExit ended = w.status;
    ended.rank = w.rank;
    ended.pid = w.pid;
    options_.on_process_exited(ended);
  }

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
  bool served = true;
  for (int slot = 0; slot < elastic.essential_slots && served; ++slot) {
    if (copies_ && copies_->taken_over(slot)) continue;  // a backup serves its range
    served = finished_ok_[static_cast<size_t>(slot)];
  }
  if (served) return true;
  // With backups that take ranges over, a server may have been taken over
  // while it was stopped (silent past the heartbeat timeout): the launcher
  // saw no death, and the process may never end. Training is over once no
  // worker runs or is to be restarted and one of them finished.
  if (elastic.takeover_replicas == 0 || !respawn_queue_.empty()) return false;
  bool any_done = false;
  for (const Worker& w : workers_) {
    if (w.rank < elastic.first_worker_slot) continue;
    if (!w.reaped && !w.abandoned) return false;
    any_done = any_done || finished_ok_[static_cast<size_t>(w.rank)];
  }
  return any_done;
}

void Supervisor::release_stragglers() {
  const auto left = running();
  if (left.empty()) return;
  stopping_ = true;
  kill_at_ = Clock::now() + options_.stop_grace;
  for (const Worker* w : left) {
    logger_.warn(
        "{} (pid {}) still runs after the job finished training without it ({} ms ago; it "
        "was dropped, or silent past the heartbeat timeout): telling it to exit ({}), "
        "SIGKILL after {} ms",
        slot_name(w->rank), w->pid, options_.stop_grace.count(), signal_name(kJobFinishedSignal),
        options_.stop_grace.count());
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
    // The others leave on their own once the job is done (their goodbyes
    // may still be on the way): only those still running a grace later
    // are told to exit.
    if (!stopping_ && !release_at_ && job_finished()) {
      release_at_ = Clock::now() + options_.stop_grace;
    }
    return;
  }
  if (stopping_) {
    logger_.info("{} while the job was stopping", what);
    return;
  }
  lost_.push_back(w.status);
  const bool replace = restarts_used_ < elastic.max_restarts;
  const bool essential = w.rank < elastic.essential_slots;
  const std::optional<ServerCopies::Death> death = record_server_death(w);
  if (death && !replace) {
    go_on_after_server_death(w, what, *death);
    return;
  }
  if (death && !death->covered()) copies_->record_replacement(w.rank);
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

std::optional<ServerCopies::Death> Supervisor::record_server_death(const Worker& w) {
  const LaunchOptions::Elastic& elastic = *options_.elastic;
  if (elastic.takeover_replicas <= 0 || w.rank >= elastic.first_worker_slot) return std::nullopt;
  if (!copies_) copies_.emplace(elastic.first_worker_slot, elastic.takeover_replicas);
  return copies_->record_death(w.rank);
}

void Supervisor::go_on_after_server_death(const Worker& w, const std::string& what,
                                          const ServerCopies::Death& death) {
  const LaunchOptions::Elastic& elastic = *options_.elastic;
  if (death.served.empty()) {  // a replacement that outlived its range's takeover
    logger_.warn("{}; it served no range (a backup serves {}'s): the job goes on without it", what,
                 slot_name(w.rank));
    return;
  }
  if (death.covered()) {
    std::string takers;
    for (const ServerCopies::Death::Range& r : death.served) {
      takers += fmt::format("{}{}'s range is served by {}", takers.empty() ? "" : ", ",
                            slot_name(r.range), slot_name(r.taker));
    }
    logger_.warn(
        "{}; {} (a backup takes it over: distributed.ps.replicas = {}, takeover on), unreplicated "
        "for the rest of the run; no restart is left (max_restarts = {}): the job goes on "
        "without it",
        what, takers, elastic.takeover_replicas, elastic.max_restarts);
    return;
  }
  const std::vector<int> lost = death.lost();
  std::string ranges;
  std::vector<int> holders;
  for (int range : lost) {
    ranges += fmt::format("{}{}", ranges.empty() ? "" : " and ", slot_name(range));
    for (int held : copies_->died_holding(range)) {
      if (std::find(holders.begin(), holders.end(), held) == holders.end()) {
        holders.push_back(held);
      }
    }
  }
  std::string deaths;
  for (int held : holders) {
    const auto exit = std::find_if(lost_.rbegin(), lost_.rend(),
                                   [held](const WorkerExit& e) { return e.rank == held; });
    if (exit == lost_.rend()) continue;
    deaths += fmt::format("{}{} (pid {}) {}", deaths.empty() ? "" : ", ", slot_name(held),
                          exit->pid, exit->describe());
  }
  fail(w.rank, w.status,
       fmt::format("{}; no live copy is left of the range{} of {} (every server that held one "
                   "died: {}); the job cannot go on without it and no restart is left "
                   "(max_restarts = {}): stopping the job",
                   what, lost.size() > 1 ? "s" : "", ranges, deaths, elastic.max_restarts),
       fmt::format("{} failed and no copy of its range is left", slot_name(w.rank)));
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
  if (!stopping_ && release_at_ && now >= *release_at_) release_stragglers();
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

}  // namespace dtrain::cli
