// The job assembled from its config: what one process of a training job
// does, whatever started it (`dtrain train`, a launcher's worker, mpirun,
// srun, or a C++ program). The strategy comes from the registry
// (strategy/registry.h): a server process serves, a worker loads the data,
// builds the model and its strategy, trains it with a Trainer and the
// callbacks of its role (the chief writes metrics.jsonl and prints
// progress), and reports.
//
// Not failures (return 0 with one line on the logger): a worker of an
// elastic job that finds the job finished while it waited or was away
// (strategy::JobFinished), or that the group dropped (strategy::LeftGroup).
// Errors: ConfigError for a job its strategy refuses; what the data, the
// strategy and the Trainer throw. Blocking: the whole job.
// Thread safety: one call at a time per process (it sets the BLAS threads).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "comm/rendezvous/launch_env.h"
#include "core/log.h"
#include "strategy/registry.h"
#include "train/callbacks.h"
#include "train/chief_output_lock.h"
#include "train/job_config.h"

namespace dtrain::train {

// A compute time of fixed_s + per_row_s x rows seconds per call.
struct ModelledTime {
  double fixed_s = 0.0;
  double per_row_s = 0.0;
};

// Test-only hooks, each applied once where the job is assembled; all may be
// empty.
struct RunHooks {
  // Worker `index`'s modelled compute time (strategy::ModelledTimer), or
  // nullopt for the measured one.
  std::function<std::optional<ModelledTime>(int64_t index)> modelled_compute;
  // A callback for the trainer of launch slot `slot` (a kill switch), or
  // nullptr.
  std::function<std::unique_ptr<Callback>(int slot)> trainer_callback;
  // Called by a ps server at each version it reaches.
  std::function<void(uint64_t version)> on_server_version;
  // Called before the strategy is built (a test chooses when a worker joins).
  std::function<void()> before_build;
};

struct RunOptions {
  std::ostream* out = nullptr;     // the chief's progress lines; nullptr: none
  std::string progress = "plain";  // bar | plain | none
  Logger* logger = nullptr;        // nullptr: Logger::stderr_logger()
  RunHooks hooks;
  // Set for a worker of an elastic job on etcd (cli/etcd_agent.h): no process
  // holds the output folder's lock for the run; this worker holds it while it
  // is rank 0 of its group (train/chief_output_lock.h).
  std::optional<ChiefOutputLockOptions> chief_output_lock;
};

// What the process that runs `dtrain train` does with a job: run it here
// (one process), or start its processes on this machine and supervise them
// (the strategy's plan, strategy/registry.h: ProcessPlan).
struct LaunchPlan {
  bool launch = false;  // start `processes` processes and supervise them
  int processes = 1;
  int servers = 0;              // slots [0, servers) serve
  bool replace_failed = false;  // restart failed processes in place
  int min_workers = 1;          // with replace_failed or elastic mode
  int essential_slots = 0;      // with replace_failed: must always run
  int takeover_replicas = 0;    // a ps job's backups that take a dead server's range over
  std::function<std::string(int slot)> slot_name;
};

// The plan for `job` seen from this process (launch: where it stands);
// checks the job as job_strategy() does.
LaunchPlan launch_plan(const JobConfig& job, const comm::LaunchInfo& launch, Logger& logger);

// One line per registered strategy ("name: summary"), for --help.
std::string strategy_help();

// What the strategy checks the job against, for this process's launch.
strategy::JobFacts job_facts(const JobConfig& job, const comm::LaunchInfo& launch);

// The job's strategy (distributed.strategy; when empty, allreduce for a job
// of several workers or processes, else local), validated against `facts`;
// warnings go to `logger`.
std::shared_ptr<const strategy::StrategySpec> job_strategy(const JobConfig& job,
                                                           const strategy::JobFacts& facts,
                                                           Logger& logger);

// The emulated link of worker `index` of `workers` (distributed.link_mbps,
// link_latency_ms; nullopt: none): slowed by the last distributed.slow_link
// entry naming it (bandwidth / FACTOR, latency x FACTOR). ConfigError for an
// entry naming a rank beyond the job or given without link_mbps.
std::optional<comm::LinkShaperOptions> worker_link(const JobConfig& job, int64_t index,
                                                   int64_t workers);

// Sets this process's compute threads from train.threads (at least 1): the
// tensor layer's intra-op threads (tensor/intra_op.h), which split the
// stride-1 convolutions, pooling and the dense layers' GEMMs (tensor/ops.h);
// OpenBLAS at one thread (GEMMs outside those, such as matmul and strided
// convolutions, run on the calling thread). Call before training or
// evaluating starts.
void set_compute_threads(const JobConfig& job);

// This process's part of the job; returns its exit code (0).
int run_job(const JobConfig& job, const comm::LaunchInfo& launch, const RunOptions& options);

}  // namespace dtrain::train
