// Launcher: runs one job as N worker processes on this machine and supervises
// them (what `dtrain train JOB.toml --workers N` does; under mpirun or srun no
// Launcher runs, those start the processes themselves).
//
// What run() does:
//  1. Picks the coordinator address: coordinator_host and a free TCP port
//     (bound and released at once, so rank 0 can bind it), unless a port is
//     given. The launcher hosts no rendezvous server: rank 0 hosts it, exactly
//     as under mpirun and Slurm, so a worker starts the same way everywhere.
//  2. Gives the workers their job secret (provide_job_secret below): the
//     key file DTRAIN_KEY_FILE names when `environment` holds one, else
//     DTRAIN_JOB_SECRET, made here (32 random bytes, hex) unless
//     `environment` already holds a non-empty one.
//  3. Starts the workers (fork + execve of `argv`, no PATH search), rank r
//     with `environment` plus DTRAIN_RANK=r, DTRAIN_WORLD_SIZE=N,
//     DTRAIN_LOCAL_RANK=r, DTRAIN_COORDINATOR=host:port and
//     DTRAIN_JOB_SECRET or DTRAIN_KEY_FILE, stdin from /dev/null. Each worker leads its own
//     process group (signals reach what it starts too) and gets SIGKILL if
//     the launcher's thread dies (PR_SET_PDEATHSIG).
//  4. Streams every worker's stdout to `out` and stderr to `err`, whole lines
//     only, each prefixed "[rank r] ". A line longer than 64 KiB is split; a
//     last line without '\n' is completed.
//  5. Supervises. The first worker that exits non-zero or dies from a signal
//     is reported in one line ("worker rank 2 (pid 1234) was killed by signal
//     9 (SIGKILL)", "worker rank 1 (pid 1234) exited with code 4"); the others
//     get SIGTERM (and SIGCONT, so that a stopped one acts on it), then
//     SIGKILL after `stop_grace`. A worker that failed because of a peer
//     that still runs (its failure report in `status_dir` names it: a rank
//     stopped past the heartbeat timeout) makes the launcher blame that peer
//     ("worker rank 1 (pid 1234) stopped responding or failed: worker rank 2
//     ... because of it (...)"). SIGINT or SIGTERM sent to
//     the launcher is forwarded to every worker and stops the job the same
//     way. When a worker exits (for any reason) whatever it left running in
//     its process group is SIGKILLed. run() returns once every worker was
//     reaped and its output drained.
//
// Restart mode: run_with_restarts() (below) runs such a job again, each time
// with a new Launcher run, when a worker failure stopped it.
//
// Elastic mode (LaunchOptions::elastic, docs/elastic.md): a worker that
// fails does not stop the others. It is logged ("worker slot 1 (pid 1234) was
// killed by signal 9 (SIGKILL); continuing with 2 workers") and reported
// through on_worker_ended; while restarts remain a new process is started for
// its slot (DTRAIN_RANK = the slot, DTRAIN_RESTART_COUNT = the processes
// started for that slot before it). Once fewer than min_workers run, the job
// stops like a failed one, its log line naming every lost slot. A worker that
// exits 0 ends normally; the job succeeds when every worker still running at
// the end exits 0. With essential_slots (a ps job's servers and chief, see
// the ps spec's plan) the failure of such a slot is never tolerated: it is
// replaced while restarts remain ("ps server 1 (pid 1234) was killed by
// signal 9 (SIGKILL); starting its replacement (restart 1 of 2)"), else the
// job stops naming it, unless a backup covers a server's range
// (Elastic::takeover_replicas): then the job goes on without it.
// LaunchResult::workers then holds one entry per process started (rank =
// slot), in start order.
//
// Exit code (LaunchResult::exit_code): 0 when every worker exited 0; else the
// cause of the stop: the first failing worker's exit code, or 1 when it died
// from a signal; 128 + the signal when the launcher was interrupted (130 for
// SIGINT, 143 for SIGTERM), even if the workers then exit 0.
//
// Signals: only during run() SIGINT and SIGTERM are caught (previous
// dispositions restored before run() returns or throws); only one run() per
// process may be active at a time. The process must not ignore SIGCHLD
// (auto-reaping would hide the exit statuses). Workers start with default
// SIGINT/SIGTERM dispositions and an empty signal mask.
//
// Blocking: run() blocks for the job's lifetime, bounded by its Deadline. Each
// step of the shutdown is bounded: stop_grace after SIGTERM, 10 s for the
// kernel to end SIGKILLed workers, output_drain_timeout for pipes held open by
// processes that left a worker's process group.
// Errors: the constructor throws UsageError for bad options. run() throws
// UsageError when another run() is active, dtrain::Error when a worker cannot
// be started (naming the rank, the program and the reason), TimeoutError when
// `deadline` passes (after stopping and reaping every worker), and
// std::system_error when a system call it depends on fails. No worker outlives
// a run(): every exit path stops and reaps them.
// Thread safety: a Launcher is used by one thread at a time. `out`, `err` and
// `logger` are written only from the thread in run().
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

struct WorkerExit;

struct LaunchOptions {
  // The worker command line; argv[0] is the program's path (for dtrain
  // itself, self_executable()).
  std::vector<std::string> argv;
  // Number of worker processes, N >= 1.
  int workers = 1;
  // Every worker's environment before the DTRAIN_* variables are added
  // (which replace entries of the same name); usually current_environment().
  std::map<std::string, std::string> environment;
  // IPv4 address the coordinator listens on and the workers connect to.
  std::string coordinator_host = "127.0.0.1";
  // 0: pick a free port on coordinator_host.
  int coordinator_port = 0;
  // False: the workers meet elsewhere (a per-host agent's workers, in etcd):
  // no port is picked and no DTRAIN_COORDINATOR is given to them.
  bool coordinator = true;
  // Several launchers form one job (the etcd agent's restart mode,
  // cli/etcd_restart_agent.h): this one's workers get DTRAIN_RANK
  // first_rank + r (DTRAIN_LOCAL_RANK stays r) and DTRAIN_WORLD_SIZE
  // world_size (0: workers). Not with `elastic`.
  int first_rank = 0;
  int world_size = 0;
  // After SIGTERM, how long workers may take to exit before SIGKILL.
  std::chrono::milliseconds stop_grace{5000};
  // After the last worker was reaped, how long to wait for end-of-file on
  // output pipes that something outside its process group still holds.
  std::chrono::milliseconds output_drain_timeout{2000};
  // A folder the workers may leave failure reports in (write_failure_report:
  // the run folder, DTRAIN_RUN_DIR): when a worker fails because a peer
  // stopped responding, the report names that peer, and the launcher blames
  // it instead of the healthy worker that noticed. Empty: none.
  std::string status_dir;
  // Called on run()'s thread once every worker was started, before
  // supervision begins, with DTRAIN_COORDINATOR as given to them; may be
  // empty. An exception it throws stops and reaps the workers and leaves run().
  std::function<void(const std::string& coordinator)> on_started;
  // What a run folder's processes.jsonl records (cli/process_log.h); each
  // may be empty. Called on run()'s thread once a process was started
  // (its slot and pid), and once one was reaped (how it ended).
  std::function<void(int slot, pid_t pid)> on_process_started;
  std::function<void(const WorkerExit& exit)> on_process_exited;
  // Elastic mode (cli/elastic_launch.h): called on the elastic
  // coordinator's thread each time it forms a generation (its number and
  // member slots by rank); may be empty.
  std::function<void(uint32_t generation, const std::vector<int>& slots)> on_generation;
  // Elastic mode when set; see the header's contract.
  struct Elastic {
    // The job stops once fewer workers than this run (1..workers -
    // first_worker_slot).
    int min_workers = 1;
    // Processes started to replace failed ones, over the whole job.
    int max_restarts = 0;
    // Called on run()'s thread just before a process for `slot` is started.
    std::function<void(int slot)> on_worker_starting;
    // Called on run()'s thread once a worker process ended (any way), with
    // the number of workers still running.
    std::function<void(const WorkerExit& exit, int running)> on_worker_ended;
    // Called on run()'s thread when the job starts stopping (too few
    // workers, a signal, the deadline), with the reason.
    std::function<void(const std::string& reason)> on_stopping;
    // Slots [0, essential_slots) must run for the job to go on (a ps job's
    // servers and its chief worker): one that fails is replaced while
    // restarts remain, else the job stops naming it.
    int essential_slots = 0;
    // Slots [0, first_worker_slot) are not workers (a ps job's servers):
    // min_workers and the "continuing with N worker(s)" lines count only the
    // others. At most essential_slots.
    int first_worker_slot = 0;
    // A ps job whose backups take a dead server's range over (the plan's
    // takeover_replicas, cli/server_copies.h): server s's range is also held
    // by servers (s+1)...(s+R) mod S, S = first_worker_slot. A server
    // failure with no restart left whose ranges all have a live holder is
    // *covered*: logged, and the job goes on without that slot; the death
    // that leaves a range without a copy stops the job naming every server
    // that held it. 0: every essential slot's failure counts as above.
    int takeover_replicas = 0;
    // The name of a slot in log lines ("ps server 1", "worker 0"); empty:
    // "worker slot N".
    std::function<std::string(int slot)> slot_name;
    // Whether the job has finished training and every process that took
    // part in it has ended (called on run()'s thread after each exit 0).
    // Empty: once every essential slot's latest process exited 0 or had its
    // range taken over (essential_slots > 0); with takeover_replicas, also
    // once no worker runs or is to be restarted and one of them exited 0 (a
    // server a backup took over while it was stopped, which no exit shows,
    // may never end); else never.
    // Processes still running stop_grace later (a worker the group
    // dropped, or one stopped past the heartbeat timeout; the others leave
    // on their own meanwhile) are told so (SIGUSR1, see
    // kJobFinishedSignal), then SIGKILLed after stop_grace more; how they
    // end does not change the job's exit code.
    std::function<bool()> job_finished;
  };
  std::optional<Elastic> elastic;
};

// How one worker ended.
struct WorkerExit {
  int rank = 0;
  pid_t pid = -1;
  bool exited = false;  // a normal exit (then `code`), else killed by `signal`
  int code = 0;
  int signal = 0;

  bool ok() const { return exited && code == 0; }
  // "exited with code 4" or "was killed by signal 9 (SIGKILL)".
  std::string describe() const;
};

struct LaunchResult {
  int exit_code = 0;  // see the header's contract
  // The failure that stopped the job, in one line ("worker rank 1 (pid
  // 1234) stopped responding: ..."); empty when none did.
  std::string failure;
  std::vector<WorkerExit> workers;  // indexed by rank
  // The worker whose failure stopped the job, if one did.
  std::optional<int> first_failed_rank;
  // When the launcher noticed that failure (steady clock), if one did.
  std::optional<std::chrono::steady_clock::time_point> failed_at;
  // The first SIGINT or SIGTERM the launcher received (and forwarded, unless
  // the job was already stopping), 0 if none.
  int interrupted_by = 0;
  // DTRAIN_COORDINATOR as given to the workers.
  std::string coordinator;
};

class Launcher {
 public:
  // `out`, `err` and `logger` belong to the caller (typically std::cout,
  // std::cerr and Logger::stderr_logger()) and must outlive the Launcher.
  // Throws UsageError for an empty argv, workers < 1, a negative stop_grace
  // or output_drain_timeout, or a port outside 0..65535.
  Launcher(LaunchOptions options, std::ostream& out, std::ostream& err, Logger& logger);
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  // Starts the workers and supervises them until all have exited; see the
  // header's contract.
  LaunchResult run(Deadline deadline);

 private:
  LaunchOptions options_;
  std::ostream& out_;
  std::ostream& err_;
  Logger& logger_;
};

// Restart mode, like torchrun's --max-restarts: runs the job described by
// `options` with a new Launcher run each time (a fresh coordinator port, and a
// fresh job secret unless `options.environment` fixes DTRAIN_JOB_SECRET), at
// most 1 + max_restarts times. After a run that a worker's failure stopped
// (first_failed_rank set, interrupted_by 0) and while restarts remain, it logs
// one line on `logger` naming the failure and the restart ("worker rank 1 (pid
// 1234) was killed by signal 9 (SIGKILL); restarting the job from its last
// checkpoint (restart 1 of 2)") and starts the job again; once the restarted
// workers are started it logs how long recovery took, from the failure being
// noticed to that start (whether training then resumes is the workers'
// business: they continue from their newest checkpoint when job.resume holds).
// Returns the last run's result: a success, an interrupted run (SIGINT or
// SIGTERM to this process, never restarted), or the failure after the last
// restart. `options.on_started`, if set, is called for every run.
// Blocks for all runs together, bounded by `deadline`. Throws what
// Launcher::run throws (the constructor's UsageError, TimeoutError when
// `deadline` passes, dtrain::Error when a worker cannot be started: no
// restart then), and UsageError for a negative max_restarts. `out`, `err` and
// `logger` as for Launcher.
LaunchResult run_with_restarts(const LaunchOptions& options, int max_restarts, std::ostream& out,
                               std::ostream& err, Logger& logger, Deadline deadline);

// What a launched worker tells the launcher when it gives up because of a
// peer: the peer's slot (its rank) and the error. The worker writes it
// (write_failure_report, atomically, to <status_dir>/failure-<slot>) before
// it exits; the launcher reads it when the worker's exit stops the job.
struct FailureReport {
  int culprit = -1;
  std::string message;
};
// Never throws: a report that cannot be written is lost (the launcher then
// blames the worker that exited).
void write_failure_report(const std::string& status_dir, int slot,
                          const FailureReport& report) noexcept;
std::optional<FailureReport> read_failure_report(const std::string& status_dir, int slot);

// The signal the launcher sends a worker that still runs after the job
// finished training without it; a dtrain worker exits 0 on it with one line.
inline constexpr int kJobFinishedSignal = SIGUSR1;

// A TCP port free on `host` (an IPv4 address) now: bound to port 0, read
// back and released, so that the process told to listen there can bind it.
// Throws UsageError for a host that is not IPv4, std::system_error.
int pick_free_port(const std::string& host);

// 32 random bytes (libsodium) as 64 hex digits: a fresh job secret.
std::string random_job_secret();

// How a launcher hands the job secret to the processes it starts, in their
// environment `env` (docs/security.md): with a key file (`key_file`, an
// absolute path, or DTRAIN_KEY_FILE already in `env`) the workers get
// DTRAIN_KEY_FILE and no DTRAIN_JOB_SECRET, so the secret itself never
// enters an environment (`ps e`, /proc/PID/environ, job scripts); without
// one they get DTRAIN_JOB_SECRET, a fresh random_job_secret() unless `env`
// already holds one. Idempotent.
void provide_job_secret(std::map<std::string, std::string>& env, const std::string& key_file = "");

// This process's environment as a map (reads `environ`; cli only).
std::map<std::string, std::string> current_environment();

// Path of the running executable (/proc/self/exe). Throws std::system_error.
std::string self_executable();

}  // namespace dtrain::cli
