#include "cli/commands.h"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <iostream>
#include <map>
#include <optional>

#include "cli/coordinator_files.h"
#include "cli/dashboard_command.h"
#include "cli/etcd_agent.h"
#include "cli/job_launch.h"
#include "cli/launcher.h"
#include "cli/process_log.h"
#include "cli/test_hooks.h"
#include "comm/rendezvous/job_secret.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/wire/curve.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/output_lock.h"
#include "io/safetensors.h"
#include "train/datasets.h"
#include "train/job_file.h"
#include "train/model_builder.h"
#include "train/partition_image.h"
#include "train/run_job.h"
#include "train/trainer.h"

namespace dtrain::cli {

namespace {

// The job file with the command line's overrides: strategy options given as
// flags become --set overrides of their keys.
train::JobConfig read_job(const TrainOptions& options, Logger& logger) {
  std::vector<std::string> overrides = options.overrides;
  if (options.servers) {
    overrides.push_back(fmt::format("distributed.ps.servers={}", *options.servers));
  }
  if (options.replicas) {
    overrides.push_back(fmt::format("distributed.ps.replicas={}", *options.replicas));
  }
  if (options.colocate) {
    overrides.push_back(fmt::format("distributed.ps.colocate={}", *options.colocate));
  }
  train::JobFile file = train::read_job_file(options.job_file, overrides);
  for (const std::string& note : file.notes) logger.warn("{}", note);
  train::JobConfig job = std::move(file.job);
  if (options.workers) job.distributed.workers = *options.workers;
  if (options.strategy) job.distributed.strategy = *options.strategy;
  if (job.distributed.workers < 1) {
    throw UsageError(fmt::format("--workers must be at least 1, got {}", job.distributed.workers));
  }
  for (const std::string& entry : options.slowdown) {
    train::parse_slowdown(entry, "--slowdown", entry);  // checked here, applied per worker
    job.distributed.slowdown.push_back(entry);
  }
  for (const std::string& entry : options.slow_link) {
    train::parse_slow_link(entry, "--slow-link", entry);  // checked here, applied per worker
    job.distributed.slow_link.push_back(entry);
  }
  if (options.output) {
    if (options.output->empty()) {
      throw UsageError(
          "--output must name a folder (it receives the checkpoints, the metrics "
          "and the final weights)");
    }
    job.output = *options.output;
  }
  if (options.threads) job.train.threads = *options.threads;
  if (options.resume) job.resume = *options.resume;
  if (options.force_resume) job.force_resume = true;
  if (options.max_restarts) job.train.max_restarts = *options.max_restarts;
  if (options.elastic) job.train.elastic = *options.elastic;
  if (options.min_workers) job.train.min_workers = *options.min_workers;
  if (options.rdzv && !options.elastic) job.train.elastic = true;  // --no-elastic: restart mode
  return job;
}

// Where this process stands: a process of a launched job, or the one that
// runs (or launches) the job.
comm::LaunchInfo resolve_launch(const TrainOptions& options) {
  comm::LaunchOverrides overrides;
  overrides.rank = options.rank;
  overrides.world_size = options.world_size;
  overrides.coordinator = options.coordinator;
  // The strategy's connection says so when it needs a coordinator (an MPI
  // backend does not).
  overrides.require_coordinator = false;
  return comm::resolve_launch_env(options.environment, overrides);
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& arg : argv) line += (line.empty() ? "" : " ") + arg;
  return line;
}

// DTRAIN_OUTPUT_LOCK_WAIT_S (set by the restart agent, cli/etcd_restart_agent.h):
// how long a rank 0 waits for the output lock its predecessor may still hold.
std::chrono::milliseconds output_lock_wait(const std::map<std::string, std::string>& env) {
  const auto it = env.find("DTRAIN_OUTPUT_LOCK_WAIT_S");
  if (it == env.end() || it->second.empty()) return std::chrono::milliseconds(0);
  int seconds = -1;
  const char* end = it->second.data() + it->second.size();
  const auto [ptr, ec] = std::from_chars(it->second.data(), end, seconds);
  if (ec != std::errc() || ptr != end || seconds < 0) {
    throw UsageError(fmt::format("DTRAIN_OUTPUT_LOCK_WAIT_S='{}' must be a whole number of seconds",
                                 it->second));
  }
  return std::chrono::seconds(seconds);
}

// A worker of an elastic job on etcd (cli/etcd_agent.h).
bool elastic_on_etcd(const comm::LaunchInfo& launch) {
  return launch.launched() && !launch.settings.rdzv.empty();
}

// One run per output folder: the launcher here, a single process, or rank 0
// of a job another launcher started holds the lock for the run's life. A
// worker of an elastic job on etcd holds it only while it is its group's
// rank 0 (train/chief_output_lock.h): none here.
std::optional<io::OutputLock> lock_for_run(const TrainOptions& options, const std::string& folder,
                                           const comm::LaunchInfo& launch,
                                           const train::LaunchPlan& plan,
                                           std::chrono::system_clock::time_point started,
                                           Logger& logger) {
  if (elastic_on_etcd(launch)) return std::nullopt;
  if (!plan.launch && launch.launched() && (launch.rank != 0 || launch.settings.output_locked)) {
    return std::nullopt;
  }
  return io::OutputLock::acquire_waiting(
      folder, io::this_process_record(command_line(options.argv), started), logger,
      output_lock_wait(options.environment));
}

// A worker of an elastic job on etcd: the lock it holds while rank 0. A new
// rank 0 waits up to twice the lease TTL (DTRAIN_OUTPUT_LOCK_WAIT_S, when
// set, instead) for its predecessor's lock: a host frozen past its lease
// holds it until it runs again and its agent, left out, stops its workers.
train::ChiefOutputLockOptions chief_output_lock(const TrainOptions& options,
                                                const train::JobConfig& job,
                                                const comm::LaunchInfo& launch,
                                                std::chrono::system_clock::time_point started) {
  train::ChiefOutputLockOptions o;
  o.folder = job.output;
  o.record = io::this_process_record(command_line(options.argv), started);
  o.wait = options.environment.contains("DTRAIN_OUTPUT_LOCK_WAIT_S")
               ? output_lock_wait(options.environment)
               : std::chrono::seconds(2 * launch.settings.rdzv_lease_ttl_s);
  o.slot = launch.rank;
  return o;
}

// This host's agent of an etcd job (cli/etcd_agent.h). It holds no output
// lock: the hosts may share one output folder, whose lock the worker that is
// rank 0 holds (restart mode: for its run; elastic mode: while it is rank 0
// of its generation, train/chief_output_lock.h).
int run_agent(const TrainOptions& options, const train::JobConfig& job, Logger& logger,
              std::ostream& out) {
  AgentOptions agent;
  agent.restart = !job.train.elastic;
  if (agent.restart && job.train.max_restarts > 0 && !job.resume) {
    throw UsageError(fmt::format(
        "--rdzv --no-elastic: {} restarts need job.resume = true (drop --no-resume): a restart "
        "would otherwise train from scratch",
        job.train.max_restarts));
  }
  agent.rdzv = *options.rdzv;
  agent.nnodes = options.nnodes;
  agent.nproc_per_node = options.nproc_per_node;
  agent.host_address = options.host_address;
  agent.lease_ttl = std::chrono::seconds(options.rdzv_ttl_s);
  agent.max_restarts = static_cast<int>(std::min<int64_t>(job.train.max_restarts, INT_MAX));
  LaunchOptions l;
  l.argv = options.argv;
  l.environment = options.environment;
  if (job.security.encrypt) l.environment["DTRAIN_ENCRYPT"] = "1";
  if (!job.security.key_file.empty()) l.environment["DTRAIN_KEY_FILE"] = job.security.key_file;
  return run_etcd_agent(agent, std::move(l), out, std::cerr, logger, Deadline::never()).exit_code;
}

}  // namespace

int run_train(const TrainOptions& options, std::ostream& out) {
  const auto started = std::chrono::system_clock::now();
  Logger& logger = Logger::stderr_logger();
  const train::JobConfig job = read_job(options, logger);
  if (options.rdzv && !options.environment.contains("DTRAIN_RDZV")) {
    return run_agent(options, job, logger, out);
  }
  comm::LaunchInfo launch = resolve_launch(options);
  comm::resolve_job_secret(launch.settings, job.security.key_file, job.source);
  if (job.security.encrypt) launch.settings.encrypt = true;
  // Under mpirun without a coordinator, rank 0 publishes its address in the
  // output folder (comm/rendezvous/coordinator_discovery.h).
  FileSystemCoordinatorFiles coordinator_files(io::default_file_system());
  launch.discovery.folder = job.output;
  launch.discovery.files = &coordinator_files;
  // Where a job another launcher started meets (dtrain's own launcher, which
  // sets DTRAIN_LAUNCH_ID, logs its coordinator itself).
  if (launch.launched() && launch.rank == 0 && !launch.coordinator_source.empty() &&
      launch.settings.launch_id.empty()) {
    logger.info("coordinator {} ({})", launch.coordinator, launch.coordinator_source);
  }
  const train::LaunchPlan plan = train::launch_plan(job, launch, logger);
  if (plan.launch) {
    ProcessCap cap = local_process_cap();
    if (options.max_local_workers) cap = {*options.max_local_workers, "--max-local-workers"};
    check_process_cap(plan, job.distributed.workers, cap);
  }
  const std::optional<io::OutputLock> lock =
      lock_for_run(options, job.output, launch, plan, started, logger);
  // The live page, in the process that runs or launches the job (its
  // launched workers got the same flag and ignore it).
  std::unique_ptr<obs::DashboardServer> dashboard;
  if (options.dashboard_port && (plan.launch || !launch.launched())) {
    dashboard = start_dashboard(job.output, options.job_file, *options.dashboard_port,
                                options.dashboard_host, out);
  }
  if (plan.launch) {
    // This process starts the job's processes here and supervises them.
    LaunchOptions l;
    l.argv = options.argv;
    l.environment = options.environment;
    l.environment["DTRAIN_OUTPUT_LOCKED"] = "1";
    if (launch.settings.encrypt) l.environment["DTRAIN_ENCRYPT"] = "1";
    provide_job_secret(l.environment, launch.settings.key_file);
    ProcessLog processes(job.output + "/processes.jsonl", plan.servers, logger);
    processes.attach(l);
    const int status = launch_job(job, plan, std::move(l), out, std::cerr, logger);
    processes.job_end(status);
    return status;
  }
  if (launch.launched() && launch.settings.encrypt) {
    // The keys every link of the job uses; constructing them here fails
    // early, with the reason, without a secret or without CURVE in libzmq.
    const comm::JobAuth auth(job.name, launch.settings.job_secret, true);
    if (launch.rank == 0) {
      logger.info(
          "links encrypted and authenticated with CURVE (security.encrypt, docs/security.md); "
          "server key {}",
          comm::wire::z85_key(auth.curve()->server.public_key));
    }
  }
  if (!launch.launched() && job.train.max_restarts > 0) {
    logger.warn(
        "train.max_restarts = {} has no effect here: only a job that `dtrain train "
        "--workers N` launches is restarted, not a single process",
        job.train.max_restarts);
  }
  train::RunOptions run;
  run.out = &out;
  run.progress = options.progress;
  run.logger = &logger;
  run.hooks = test_hooks(options.environment, launch);
  if (elastic_on_etcd(launch)) {
    run.chief_output_lock = chief_output_lock(options, job, launch, started);
  }
  return train::run_job(job, launch, run);
}

int run_partition(const PartitionCommandOptions& options, std::ostream& out) {
  const train::JobConfig job = train::read_job_file(options.job_file, options.overrides).job;
  const train::Datasets data = train::load_datasets(job);
  train::PartitionRequest p;
  p.kind = options.kind;
  p.parts = options.workers;
  p.seed = options.seed;
  p.classes_per_worker = options.classes_per_worker;
  p.alpha = options.alpha;
  p.quantity_sigma = options.quantity_sigma;
  p.shards_per_worker = options.shards_per_worker;
  out << train::partition_table(job, data, p);
  if (!options.image.empty()) {
    const obs::ImageSize size = train::write_partition_image(job, data, p, options.image);
    fmt::print(out, "wrote {} ({}x{})\n", options.image, size.width, size.height);
  }
  return 0;
}

int run_eval(const EvalOptions& options, std::ostream& out) {
  const train::JobConfig job = train::read_job_file(options.job_file, options.overrides).job;
  train::set_compute_threads(job);
  const train::Datasets data = train::load_datasets(job);
  train::check_input_shape(job, data.test);
  Rng rng(job.seed);
  auto model = train::build_model(job.model, rng, job.source);
  try {
    model->load_state_dict(io::load_safetensors(options.weights), true);
  } catch (const UsageError& e) {
    throw DataError(
        fmt::format("{}: the weights do not fit the job's model: {}", options.weights, e.what()));
  }
  const train::EvalResult r = train::evaluate(*model, data.test, job.train.eval_batch_size);
  fmt::print(out, "{}: {} test samples: accuracy {:.2f}%, loss {:.4f}\n", options.weights,
             r.samples, 100.0 * r.accuracy, r.loss);
  return 0;
}

}  // namespace dtrain::cli
