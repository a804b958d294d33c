// The strategy registry: every distribution strategy a job can name
// (`distributed.strategy`, `--strategy`), each one StrategySpec. A spec is
// the strategy as a job sees it before anything trains: the options it reads
// from its own table ([distributed.<name>]), the checks they need against
// the job, the processes the job runs, what each process is (a worker or a
// server), and how to build the strategy a worker trains with. The command
// line and the trainer never compare strategy names: they ask the spec.
//
// Adding a strategy: one source file that defines the strategy and its spec,
// and one line in registry.cpp's table (docs/strategies.md walks through it).
//
// Lifecycle of a spec in a job: make_strategy_spec(name) (defaults), then
// read_options() once from the job file, validate() once the command line
// has set the worker count and the modes, plan() on the launching process,
// role() and then build() or serve() in each process of the job.
// Ownership: a spec is a value owned by the JobConfig (shared, immutable
// after read_options()). Thread safety: const methods may be called from any
// thread. Errors: ConfigError naming the key and its line (read_options,
// validate); build() and serve() throw what the strategy throws (CommError,
// TimeoutError, UsageError). Blocking: build() may connect to peers (bounded
// by the job's timeout); serve() runs a server process until the job ends.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "comm/rendezvous/launch_env.h"
#include "comm/transport/link_shaper.h"
#include "core/config_table.h"
#include "core/log.h"
#include "core/trace.h"
#include "optim/optimizer_config.h"
#include "ps/server.h"
#include "strategy/batch_balancer.h"
#include "strategy/compression.h"
#include "strategy/strategy.h"

namespace dtrain::strategy {

// What the job around a strategy looks like, after the job file and the
// command line: the facts a spec checks its options against.
struct JobFacts {
  int64_t workers = 1;         // distributed.workers (or the launched world's)
  bool elastic = false;        // train.elastic
  int64_t max_restarts = 0;    // train.max_restarts
  int64_t min_workers = 0;     // train.min_workers (0: the strategy's default)
  bool resume = true;          // job.resume
  bool dynamic_batch = false;  // distributed.dynamic_batch
  bool slowdown = false;       // a distributed.slowdown entry exists
  bool class_weights = false;  // train.class_weights != "none"
  bool partitioned = false;    // data.partition set
  // [compression]: a compressor set (type != none), local SGD
  // (local_steps > 1), the convergence guard.
  bool compression = false;
  bool local_sgd = false;
  bool guard = false;
  bool privacy = false;  // privacy.enabled: DP-SGD (train/dp_sgd.h)
  // This process belongs to a job of several processes started by a
  // launcher (dtrain's, mpirun, srun): its world and where that came from.
  bool launched = false;
  int launched_world_size = 1;
  std::string launched_by;
  // Not launched: the processes dtrain's own launcher would start here link
  // over private ipc (its private run folder; no DTRAIN_PS_ENDPOINTS, no
  // DTRAIN_TCP_ONLY, no encryption), as they will decide once started.
  bool launcher_private_ipc = false;
  // Where the generic keys were written ([distributed], [train], [data]),
  // for errors: distributed.workers, train.elastic, ...
  KeyLines where;
};

// How the local launcher runs the job (dtrain train --workers N).
struct ProcessPlan {
  // Processes the launcher starts; 1: this process trains alone.
  int processes = 1;
  // Slots [0, servers) serve (a ps job's servers); the others are workers.
  int servers = 0;
  // Failed processes are started again in place while restarts remain (a
  // ps job); otherwise a failure stops the whole job, which restart mode
  // (train.max_restarts) starts again from its last checkpoint.
  bool replace_failed = false;
  // The job's smallest number of running workers (replace_failed).
  int min_workers = 1;
  // Slots [0, essential_slots) must run for the job to go on (replaced, else
  // the job stops): a ps job's servers and its chief worker.
  int essential_slots = 0;
  // A ps job whose dead server's range a backup takes over
  // (distributed.ps.replicas with the takeover on): server s's range is
  // also held by servers (s+1)...(s+R) mod S. 0: no takeover.
  int takeover_replicas = 0;
  // A slot's name in log lines ("ps server 1", "worker 0"); empty: "rank N".
  std::function<std::string(int slot)> slot_name;
};

// One process's part in the job.
struct ProcessRole {
  bool server = false;  // serves (serve()) instead of training (build())
  int index = 0;        // its server or worker index
  // The worker that writes checkpoints, metrics and the final weights.
  bool chief = false;
  // Its name in log lines ("worker 1", "ps server 0"); empty for a plain rank.
  std::string name;
};

// What build() and serve() get from the job assembly (train/run_job.h).
struct BuildContext {
  const comm::LaunchInfo* launch = nullptr;  // this process's place and settings
  std::string job_name;                      // names the job on the wire
  // The job's model (the same initial weights on every call), optimizer
  // (over the given parameters) and loss.
  ModelFactory make_model;
  OptimizerFactory make_optimizer;
  LossFn loss;
  optim::OptimizerConfig optimizer;  // ps servers run it on their shards
  uint64_t seed = 1;
  JobFacts facts;                                      // what validate() saw
  std::string output;                                  // job.output (checkpoints)
  int64_t keep_checkpoints = 3;                        // train.keep_checkpoints
  std::chrono::milliseconds timeout{60000};            // distributed.timeout_ms
  std::chrono::milliseconds heartbeat_timeout{10000};  // distributed.heartbeat_timeout_ms
  BatchBalancerOptions dynamic_batch;
  CompressionSettings compression;  // the job's [compression] table
  // distributed.link_mbps / link_latency_ms: an emulated slow link on every
  // message the job's processes send (tests and benchmarks).
  std::optional<comm::LinkShaperOptions> link;
  Logger* logger = nullptr;
  // Test hook: called by a ps server with each version it reaches.
  std::function<void(uint64_t version)> on_server_version;
  // This worker's timeline (train.trace; core/trace.h), or null. Outlives
  // the strategy built from this context.
  TraceSink* trace = nullptr;
};

class StrategySpec {
 public:
  virtual ~StrategySpec() = default;

  virtual std::string_view name() const = 0;
  // One line for --help.
  virtual std::string_view summary() const = 0;
  // Reads the strategy's table ([distributed.<name>], with the deprecated
  // flat keys of [distributed] as aliases) and checks each value alone.
  virtual void read_options(ConfigTable& table) = 0;
  // Checks the options against the job: ConfigError naming the key; what
  // is allowed but has no effect goes to `warnings`.
  virtual void validate(const JobFacts& job, std::vector<std::string>& warnings) const = 0;
  // How the launcher on this machine runs the job.
  virtual ProcessPlan plan(const JobFacts& job) const = 0;
  // Whether a job of this strategy runs in several processes started by a
  // launcher (then dtrain train --workers N starts plan().processes), or
  // in this one process alone.
  virtual bool multi_process(const JobFacts& job) const = 0;
  // The job's workers (that train): by default the launched world, else
  // distributed.workers.
  virtual int64_t workers(const JobFacts& job) const;
  // This process's role: by default worker `rank`, the chief being rank 0.
  virtual ProcessRole role(const JobFacts& job, const comm::LaunchInfo& launch) const;
  // Whether this process exchanges dtrain's own frames with the job's other
  // processes (then they must be authenticated: a job secret, or --insecure
  // on purpose). By default: whenever the job was launched as several
  // processes.
  virtual bool uses_own_wire(const JobFacts& job) const;
  // A worker's strategy.
  virtual std::unique_ptr<Strategy> build(const BuildContext& context) const = 0;
  // Whether this job's workers sum their gradients plainly
  // (Strategy::sums_gradients()), as DP-SGD needs: validate() refuses, with
  // the key, what does not combine with privacy.enabled.
  virtual bool sums_gradients(const JobFacts& /*job*/) const { return false; }
  // Whether the convergence guard (compression.guard) can watch this
  // strategy's runs: its every update reports the statistics of all workers
  // alike, and it can weaken its compression (Strategy::
  // set_communication_level).
  virtual bool supports_guard() const { return false; }
  // A server process: serves until the job ends, returns its exit code.
  // Only for roles with server = true.
  virtual int serve(const BuildContext& context) const;

  virtual std::unique_ptr<StrategySpec> clone() const = 0;
};

// Checks shared by specs. refuse_several_processes: ConfigError when the job
// was launched as several processes (a strategy of one process).
// check_one_process_job: slowdowns and compression need worker processes
// (ConfigError);
// dynamic batch sizing does nothing on one process (a warning).
// refuse_elastic: ConfigError on train.elastic for a strategy without an
// elastic mode.
void refuse_several_processes(const JobFacts& job, std::string_view strategy);
void check_one_process_job(const JobFacts& job, std::string_view strategy,
                           std::vector<std::string>& warnings);
void refuse_elastic(const JobFacts& job, std::string_view strategy);

// The registered strategies' names, in registration order.
std::vector<std::string> strategy_names();
// A new spec of strategy `name` with default options; ConfigError naming
// `where` and listing the names when there is none.
std::unique_ptr<StrategySpec> make_strategy_spec(const std::string& name, const KeyLines& where,
                                                 std::string_view key);

}  // namespace dtrain::strategy
