// The subcommands of the dtrain executable, callable from tests.
// They throw dtrain::Error kinds; main() maps them to exit codes.
// Blocking: they run a whole training job or evaluation.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace dtrain::cli {

struct TrainOptions {
  std::string job_file;
  std::vector<std::string> overrides;  // "key=value"
  std::optional<int64_t> workers;
  // The most processes `--workers N` may start here (default:
  // local_process_cap()).
  std::optional<int64_t> max_local_workers;
  // Resume from a checkpoint of another job identity (--force-resume).
  bool force_resume = false;
  // ps: server processes (distributed.servers).
  std::optional<int64_t> servers;
  // ps, sync: backup servers per key range (distributed.ps.replicas).
  std::optional<int64_t> replicas;
  // ps: server i runs in worker i's process (distributed.ps.colocate).
  std::optional<bool> colocate;
  std::optional<std::string> strategy;
  std::optional<std::string> output;
  std::optional<int64_t> threads;
  std::optional<bool> resume;
  // Restarts of a launched job after a worker failure (train.max_restarts).
  std::optional<int64_t> max_restarts;
  // --slowdown RANK=FACTOR entries, added to distributed.slowdown (tests and
  // benchmarks: that worker computes FACTOR times slower).
  std::vector<std::string> slowdown;
  // --slow-link RANK=FACTOR entries, added to distributed.slow_link
  // (benchmarks: one worker's emulated link FACTOR times slower).
  std::vector<std::string> slow_link;
  // Elastic mode (train.elastic) and its smallest group (train.min_workers).
  std::optional<bool> elastic;
  std::optional<int64_t> min_workers;
  // --rdzv etcd://HOST:PORT/JOB_ID: run the per-host agent (cli/etcd_agent.h)
  // with --nnodes MIN:MAX and --nproc-per-node K; its workers, which see
  // DTRAIN_RDZV, train.
  std::optional<std::string> rdzv;
  std::string nnodes = "1";
  int nproc_per_node = 1;
  std::string host_address;        // --host-address: this host's address (agent)
  int rdzv_ttl_s = 10;             // --rdzv-ttl: the agent's and its workers' lease TTL
  std::string progress = "plain";  // bar | plain | none
  // A worker's place in a launched job; each overrides its environment
  // variable (DTRAIN_RANK, DTRAIN_WORLD_SIZE, DTRAIN_COORDINATOR).
  std::optional<int> rank;
  std::optional<int> world_size;
  std::optional<std::string> coordinator;
  // The process's environment (rank, world size and coordinator of a
  // launched worker: DTRAIN_*, mpirun's OMPI_*, Slurm's SLURM_*; the job
  // secret DTRAIN_JOB_SECRET) and its command line (to start the workers).
  std::map<std::string, std::string> environment;
  std::vector<std::string> argv;
  // --dashboard PORT (0: a free one) and --dashboard-host: the live page,
  // served by the process that runs or launches the job (cli/dashboard_command.h).
  std::optional<int> dashboard_port;
  std::string dashboard_host = "127.0.0.1";
};

struct EvalOptions {
  std::string job_file;
  std::string weights;
  std::vector<std::string> overrides;
};

// `dtrain partition`: how a partitioner splits the job's training set.
struct PartitionCommandOptions {
  std::string job_file;
  std::vector<std::string> overrides;
  std::string kind = "iid";
  int64_t workers = 4;
  uint64_t seed = 1;
  int64_t classes_per_worker = 2;
  double alpha = 0.5;
  double quantity_sigma = 1.0;
  int64_t shards_per_worker = 2;
  std::string image;  // --image: also draw the table as a heat map (.svg or .png)
};

int run_train(const TrainOptions& options, std::ostream& out);
// Prints the per-worker label histogram as a text table.
int run_partition(const PartitionCommandOptions& options, std::ostream& out);
int run_eval(const EvalOptions& options, std::ostream& out);

// `dtrain plot RUN_DIR... -o FILE`: the runs' training curves (obs/plot.h).
struct PlotCommandOptions {
  std::vector<std::string> runs;  // "DIR" or "NAME=DIR"
  std::string output;             // .svg or .png
  std::string title;
  int width = 1200;
  int height = 900;
};
// Prints one line naming the file and each run's last step and accuracy.
int run_plot(const PlotCommandOptions& options, std::ostream& out);

}  // namespace dtrain::cli
