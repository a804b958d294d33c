// Supervisor: the poll loop of one Launcher run (cli/launcher.h): it moves
// the workers' output to the launcher's streams line by line, notices exits
// (pidfds), decides what an exit means (restart mode: the job stops and
// blames the failed rank, or the peer its failure report names; elastic
// mode: replace, go on or stop, a ps server's death going on when a backup
// covers its range, cli/server_copies.h; the end of training: release the
// stragglers), forwards signals and enforces the stop's grace and the
// deadline. Launcher::run() starts the workers, runs one Supervisor and
// reads its outcome.
//
// Internal to cli/. Ownership: refers to the Launcher's workers, signals,
// options, streams and logger, which outlive it. Thread safety: one thread
// (run()'s). Errors: std::system_error from the system calls (poll, waitpid).
// Blocking: run() until every worker was reaped and its output drained.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cli/launcher.h"
#include "cli/server_copies.h"
#include "cli/worker_process.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

// Longest line passed on whole; longer ones are split (bounds memory per pipe).
inline constexpr size_t kMaxLineBytes = 64 * 1024;

// "0 (pid 11), 1 (pid 12)": ranks and pids for log lines.
std::string list_ranks(const std::vector<const process::Worker*>& workers);

// The poll loop of one run: moves output, notices exits, stops the job.
class Supervisor {
 public:
  Supervisor(process::WorkerSet& workers, process::SignalForwarding& signals,
             const LaunchOptions& options, std::ostream& out, std::ostream& err, Logger& logger)
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
  std::optional<std::chrono::steady_clock::time_point> failed_at() const { return failed_at_; }
  int interrupted_by() const { return interrupted_by_; }

 private:
  enum class Stream { kOut, kErr };

  std::vector<const process::Worker*> running() const {
    std::vector<const process::Worker*> r;
    for (const process::Worker& w : workers_) {
      if (!w.reaped && !w.abandoned) r.push_back(&w);
    }
    return r;
  }
  bool any_pipe_open() const {
    return std::any_of(workers_.begin(), workers_.end(),
                       [](const process::Worker& w) { return w.out.is_open() || w.err.is_open(); });
  }

  void wait_for_events(std::chrono::steady_clock::time_point wake);
  bool read_chunk(process::Worker& w, Stream stream);
  void drain(process::Worker& w);
  void emit(int rank, Stream stream, std::string_view line);
  void check_exits();
  void finish(process::Worker& w);
  // Elastic mode's handling of an ended worker (finish() reaped it).
  void finish_elastic(const process::Worker& w, const std::string& what);
  // Elastic mode: the slot's name in log lines.
  std::string slot_name(int slot) const;
  // Elastic mode with takeover_replicas: records a server's failure in
  // copies_ (nullopt for a worker, or without a takeover).
  std::optional<ServerCopies::Death> record_server_death(const process::Worker& w);
  // A server failure with no restart left: logs it when its ranges all
  // have a live taker (the job goes on), else stops the job naming every
  // server that held a lost range.
  void go_on_after_server_death(const process::Worker& w, const std::string& what,
                                const ServerCopies::Death& death);
  // Records the failure that stops the job (blaming `rank`) and stops it.
  void fail(int rank, const WorkerExit& status, const std::string& what, const std::string& why);
  // Non-elastic: the rank a failed worker's report blames (a peer that
  // stopped responding, still running) and the line that says so; else
  // `w` itself.
  std::pair<int, std::string> blame(const process::Worker& w) const;
  // Elastic mode: whether the job finished training (see Elastic::job_finished).
  bool job_finished() const;
  // Tells the processes still running after the job finished to exit.
  void release_stragglers();
  void begin_stop(int sig, const std::string& why);
  void handle_signals();
  void enforce_timers(Deadline deadline);

  std::vector<process::Worker>& workers_;
  process::SignalForwarding& signals_;
  const LaunchOptions& options_;
  std::ostream& out_;
  std::ostream& err_;
  Logger& logger_;
  std::vector<char> buffer_ = std::vector<char>(kMaxLineBytes);

  bool stopping_ = false;
  std::chrono::steady_clock::time_point kill_at_;                     // valid while stopping_
  std::optional<std::chrono::steady_clock::time_point> killed_at_;    // when SIGKILL went out
  std::optional<std::chrono::steady_clock::time_point> drain_until_;  // set once no worker runs
  // Elastic mode: when the processes still running after the job finished
  // are told to exit (stop_grace after it finished).
  std::optional<std::chrono::steady_clock::time_point> release_at_;
  bool timed_out_ = false;
  std::optional<int> first_failed_rank_;
  std::optional<WorkerExit> first_failure_;
  std::string failure_;
  std::optional<std::chrono::steady_clock::time_point> failed_at_;
  int interrupted_by_ = 0;

  // Elastic mode.
  std::function<void(int slot, double since_failure_s)> respawn_;
  // Slots to start again and when their failure was noticed, from finish().
  std::vector<std::pair<int, std::chrono::steady_clock::time_point>> respawn_queue_;
  int restarts_used_ = 0;
  std::vector<WorkerExit> lost_;        // failed workers, in order
  std::vector<bool> finished_ok_;       // by slot: its latest process exited 0
  std::optional<ServerCopies> copies_;  // with takeover_replicas, from the first failure
};

}  // namespace dtrain::cli
