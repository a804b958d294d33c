#include "cli/commands.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <nlohmann/json.hpp>

#include "cli/elastic_launch.h"
#include "cli/elastic_worker.h"
#include "cli/job_file.h"
#include "cli/launcher.h"
#include "cli/ps_job.h"
#include "cli/ps_launch.h"
#include "cli/test_hooks.h"
#include "cli/worker_comm.h"
#include "comm/collectives/communicator.h"
#include "comm/rendezvous/launch_env.h"
#ifdef DTRAIN_HAVE_MPI
#include "comm/collectives/mpi_collectives.h"
#endif
#include "core/error.h"
#include "core/log.h"
#include "data/class_weights.h"
#include "data/csv.h"
#include "data/ctr.h"
#include "data/idx.h"
#include "data/partition.h"
#include "data/synthetic.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/class_weighted_loss.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "strategy/ps_strategy.h"
#include "train/callbacks.h"
#include "train/metrics.h"
#include "train/model_builder.h"
#include "train/trainer.h"

namespace dtrain::cli {

namespace {

struct Datasets {
  data::TensorDataset train;
  data::TensorDataset test;
  // ctr: the generating model's click probability of each test sample.
  std::vector<float> test_click_probability;
};

Datasets load_data(const train::JobConfig& job) {
  const train::DataConfig& d = job.data;
  Datasets out;
  if (d.dataset == "mnist") {
    data::IdxOptions o;
    o.normalize = d.normalize;
    o.limit = d.train_limit;
    out.train = data::load_mnist(d.path, data::MnistSplit::kTrain, o);
    o.limit = d.test_limit;
    out.test = data::load_mnist(d.path, data::MnistSplit::kTest, o);
  } else if (d.dataset == "csv") {
    data::CsvOptions o;
    o.label_column = d.label_column;
    o.limit = d.train_limit;
    out.train = data::read_csv(d.path, o);
    if (!d.test_path.empty()) {
      o.limit = d.test_limit;
      o.num_classes = out.train.num_classes();
      out.test = data::read_csv(d.test_path, o);
    }
  } else if (d.dataset == "ctr") {
    data::CtrData ctr = data::make_ctr(d.ctr);
    out.train = std::move(ctr.train.samples);
    out.test = std::move(ctr.test.samples);
    out.test_click_probability = std::move(ctr.test.click_probability);
  } else {
    data::BlobsOptions o;
    o.samples = d.synthetic_samples;
    o.features = d.synthetic_features;
    o.num_classes = d.synthetic_classes;
    o.seed = job.seed;
    const data::TensorDataset all = data::make_gaussian_blobs(o);
    const int64_t test = all.size() / 5;
    out.train = all.slice(0, all.size() - test);
    out.test = all.slice(all.size() - test, test);
  }
  return out;
}

// A binary job's held-out ROC AUC (the model's probability of class 1) and,
// on generated clicks, the generating model's AUC on the same samples: one
// line through `progress` (when there is one) and an "auc" event in the
// metrics file. Skipped when the test set lacks either class.
void report_test_auc(const train::JobConfig& job, nn::Module& model, const Datasets& data,
                     train::Callback* progress) {
  const std::vector<int64_t>& labels = data.test.labels();
  const auto positives = std::count(labels.begin(), labels.end(), int64_t{1});
  if (data.test.num_classes() != 2 || positives == 0 || positives == data.test.size()) return;
  const double auc = train::roc_auc(
      train::positive_class_probability(model, data.test, job.train.eval_batch_size), labels);
  nlohmann::json event{{"event", "auc"}, {"test_samples", data.test.size()}, {"test_auc", auc}};
  std::string line = fmt::format("test AUC {:.4f} on {} samples", auc, data.test.size());
  if (!data.test_click_probability.empty()) {
    const double generating = train::roc_auc(data.test_click_probability, labels);
    event["generating_model_auc"] = generating;
    line += fmt::format(", generating model {:.4f} (gap {:.4f})", generating, generating - auc);
  }
  if (progress != nullptr) progress->on_message(line);
  const std::string path = job.output + "/metrics.jsonl";
  std::ofstream metrics(path, std::ios::app);
  metrics << event.dump() << '\n';
  metrics.flush();
  if (!metrics) throw Error(fmt::format("cannot write metrics file {}", path));
}

// The shapes of the data and of the model's input must agree.
void check_input_shape(const train::JobConfig& job, const data::TensorDataset& data) {
  const Shape expected(job.model.input_shape.begin(), job.model.input_shape.end());
  if (data.sample_shape() != expected) {
    throw ConfigError(job.source, "model.input_shape", 0,
                      fmt::format("the model expects samples of shape {}, the data set has {}",
                                  shape_str(expected), shape_str(data.sample_shape())));
  }
}

// How a worker process talks to the others: dtrain's Communicator, or MPI.
struct WorkerCollectives {
  std::unique_ptr<comm::Communicator> native;
#ifdef DTRAIN_HAVE_MPI
  std::unique_ptr<comm::MpiSession> mpi_session;
  std::unique_ptr<comm::MpiCollectives> mpi;
#endif
};

WorkerCollectives connect_collectives(const train::JobConfig& job, const comm::LaunchInfo& launch,
                                      const std::map<std::string, std::string>& env, Logger& logger) {
  WorkerCollectives out;
  if (job.distributed.backend == "mpi") {
#ifdef DTRAIN_HAVE_MPI
    out.mpi_session = std::make_unique<comm::MpiSession>(nullptr, nullptr);
    out.mpi = std::make_unique<comm::MpiCollectives>();
    if (out.mpi->size() != launch.world_size || out.mpi->rank() != launch.rank) {
      throw ConfigError(job.source, "distributed.backend", 0,
                        fmt::format("MPI says rank {} of {}, the environment ({}) rank {} of {}: the "
                                    "mpi backend needs a job started by mpirun",
                                    out.mpi->rank(), out.mpi->size(), launch.source, launch.rank,
                                    launch.world_size));
    }
    return out;
#else
    throw ConfigError(job.source, "distributed.backend", 0, "this dtrain was built without MPI");
#endif
  }
  out.native = connect_worker(job.name, launch, env, std::chrono::milliseconds(job.distributed.timeout_ms),
                              logger);
  return out;
}

// This worker's slowdown factor from distributed.slowdown (1: none): the
// last entry naming its rank, else the last "all" entry.
double slowdown_for(const train::JobConfig& job, int64_t rank, int64_t world_size) {
  double factor = 1.0;
  double all_factor = 1.0;
  bool named = false;
  for (const std::string& entry : job.distributed.slowdown) {
    const Slowdown s = parse_slowdown(entry, job.source, "distributed.slowdown");
    if (s.rank >= world_size) {
      throw ConfigError(job.source, "distributed.slowdown", 0,
                        fmt::format("'{}' names rank {}, but the job has {} workers", entry,
                                    s.rank, world_size));
    }
    if (s.rank == Slowdown::kAllRanks) all_factor = s.factor;
    if (s.rank == rank) {
      factor = s.factor;
      named = true;
    }
  }
  return named ? factor : all_factor;
}

strategy::LossFn make_loss(const train::JobConfig& job, const data::TensorDataset& train) {
  if (job.train.class_weights == "balanced") {
    return strategy::class_weighted_cross_entropy_loss(
        data::balanced_class_weights(train.labels(), train.num_classes()));
  }
  return strategy::cross_entropy_loss();
}

std::unique_ptr<strategy::Strategy> make_strategy(const train::JobConfig& job, WorkerCollectives* worker,
                                                  const comm::LaunchInfo& launch,
                                                  const std::map<std::string, std::string>& env,
                                                  const strategy::LossFn& loss) {
  Rng rng(job.seed);
  auto model = train::build_model(job.model, rng, job.source);
  auto make_optimizer = [&job](std::vector<Variable> params) {
    return optim::make_optimizer(job.optimizer, std::move(params));
  };
  if (worker != nullptr) {
    strategy::AllReduceOptions o;
    o.bucket_bytes = static_cast<size_t>(job.distributed.bucket_bytes);
    o.timeout = std::chrono::milliseconds(job.distributed.timeout_ms);
    o.accumulation_steps = job.distributed.accumulation_steps;
    o.dynamic_batch.enabled = job.distributed.dynamic_batch;
    o.dynamic_batch.rebalance_every = job.distributed.rebalance_every;
    o.dynamic_batch.smoothing = job.distributed.smoothing;
    o.dynamic_batch.min_share = job.distributed.min_share;
    o.dynamic_batch.max_share = job.distributed.max_share;
    std::unique_ptr<strategy::Strategy> made;
#ifdef DTRAIN_HAVE_MPI
    if (worker->mpi) {
      made = std::make_unique<strategy::AllReduceStrategy>(
          std::move(model), make_optimizer, static_cast<comm::Collectives&>(*worker->mpi), o, loss);
    }
#endif
    if (!made) {
      made = std::make_unique<strategy::AllReduceStrategy>(std::move(model), make_optimizer,
                                                           *worker->native, o, loss);
    }
    const double slowdown = slowdown_for(job, launch.rank, launch.world_size);
    if (slowdown != 1.0) made->set_compute_timer(std::make_unique<strategy::SlowdownTimer>(slowdown));
    if (auto modelled = test_compute_timer(env, launch.rank)) made->set_compute_timer(std::move(modelled));
    return made;
  }
  if (job.distributed.strategy == "mirrored") {
    auto make_replica = [&job] {
      Rng replica_rng(job.seed);
      return std::unique_ptr<nn::Module>(train::build_model(job.model, replica_rng, job.source));
    };
    return std::make_unique<strategy::MirroredStrategy>(std::move(model), make_replica,
                                                        job.distributed.workers, make_optimizer, loss);
  }
  return std::make_unique<strategy::LocalStrategy>(std::move(model), make_optimizer, loss);
}

// The checks of a ps job that depend on the command line as well as the file.
void check_ps_config(const train::JobConfig& job) {
  const train::DistributedConfig& d = job.distributed;
  if (d.servers < 1) {
    throw ConfigError(job.source, "distributed.servers", 0,
                      fmt::format("must be at least 1, got {}", d.servers));
  }
  if (d.consistency != "sync" && d.consistency != "async" && d.consistency != "ssp") {
    throw ConfigError(job.source, "distributed.consistency", 0,
                      fmt::format("'{}' is not one of: sync, async, ssp", d.consistency));
  }
  if (d.staleness < 0) {
    throw ConfigError(job.source, "distributed.staleness", 0,
                      fmt::format("must not be negative, got {}", d.staleness));
  }
  if (d.backup_workers < 0 || d.backup_workers >= d.workers) {
    throw ConfigError(job.source, "distributed.backup_workers", 0,
                      fmt::format("{} backup workers with {} workers: must be in [0, {})",
                                  d.backup_workers, d.workers, d.workers));
  }
  if (d.backup_workers > 0 && d.consistency != "sync") {
    throw ConfigError(job.source, "distributed.backup_workers", 0,
                      fmt::format("backup workers need consistency 'sync', not '{}'", d.consistency));
  }
  if (d.accumulation_steps != 1) {
    throw ConfigError(job.source, "distributed.accumulation_steps", 0,
                      "gradient accumulation needs the allreduce strategy; ps pushes every step");
  }
  if (d.backend != "native") {
    throw ConfigError(job.source, "distributed.backend", 0,
                      fmt::format("ps talks to its servers over ZeroMQ; backend '{}' is for allreduce",
                                  d.backend));
  }
  if (d.dynamic_batch && d.consistency != "sync") {
    throw ConfigError(job.source, "distributed.dynamic_batch", 0,
                      fmt::format("dynamic batch sizing with the ps strategy needs consistency "
                                  "'sync', not '{}': the workers' shares are computed from each "
                                  "version's measurements, which only sync versions share",
                                  d.consistency));
  }
  if (d.dynamic_batch && d.backup_workers > 0) {
    throw ConfigError(job.source, "distributed.dynamic_batch", 0,
                      fmt::format("dynamic batch sizing needs every worker in every version; "
                                  "with backup_workers = {} a late worker would miss a version's "
                                  "measurements and split the batch differently",
                                  d.backup_workers));
  }
  slowdown_for(job, 0, d.workers);  // checks that every named rank is a worker
  // A process started again in place of a failed one rejoins with fresh
  // runtime state: the shares of a dynamic batch (the others keep theirs, so
  // the rows would no longer tile the batch) and the position in its own
  // partition are not recovered yet.
  if (job.train.max_restarts > 0 && d.dynamic_batch) {
    throw ConfigError(job.source, "train.max_restarts", 0,
                      "restarting failed ps processes with dynamic batch sizing is not supported "
                      "yet: a restarted worker would split the batch differently from the others");
  }
  if (job.train.max_restarts > 0 && !job.data.partition.empty()) {
    throw ConfigError(job.source, "train.max_restarts", 0,
                      "restarting failed ps processes with data.partition is not supported yet: a "
                      "restarted worker would not know how far its partition was trained");
  }
}

// Worker `worker` of a ps job: finds the servers through the rendezvous and
// initialises them (or joins them) with the job's model.
std::unique_ptr<strategy::PsStrategy> make_ps_strategy(const train::JobConfig& job,
                                                       const comm::LaunchInfo& launch, int worker,
                                                       const std::map<std::string, std::string>& env,
                                                       Logger& logger, strategy::LossFn loss) {
  ps::ClientOptions c;
  c.worker = worker;
  c.num_workers = static_cast<int>(job.distributed.workers);
  c.server_endpoints = discover_ps_servers(job, launch, env, logger);
  c.timeout = std::chrono::milliseconds(job.distributed.timeout_ms);
  c.heartbeat_interval =
      std::chrono::milliseconds(std::min<int64_t>(1000, job.distributed.heartbeat_timeout_ms / 4));
  strategy::PsOptions o;
  if (const auto id = env.find(kLaunchIdVariable); id != env.end()) o.launch_id = id->second;
  o.reshard_lost_workers = job.distributed.backup_workers == 0;
  o.consistency = ps::parse_consistency(job.distributed.consistency);
  o.dynamic_batch.enabled = job.distributed.dynamic_batch;
  o.dynamic_batch.rebalance_every = job.distributed.rebalance_every;
  o.dynamic_batch.smoothing = job.distributed.smoothing;
  o.dynamic_batch.min_share = job.distributed.min_share;
  o.dynamic_batch.max_share = job.distributed.max_share;
  Rng rng(job.seed);
  auto model = train::build_model(job.model, rng, job.source);
  auto make_optimizer = [&job](std::vector<Variable> params) {
    return optim::make_optimizer(job.optimizer, std::move(params));
  };
  const auto secret = env.find("DTRAIN_JOB_SECRET");
  const comm::JobAuth auth(job.name, secret == env.end() ? "" : secret->second);
  auto made = std::make_unique<strategy::PsStrategy>(std::move(model), make_optimizer,
                                                     std::move(c), auth, logger, o, std::move(loss));
  const double slowdown = slowdown_for(job, worker, job.distributed.workers);
  if (slowdown != 1.0) made->set_compute_timer(std::make_unique<strategy::SlowdownTimer>(slowdown));
  if (auto modelled = test_compute_timer(env, worker)) made->set_compute_timer(std::move(modelled));
  return made;
}

// What elastic mode supports (the launcher and every worker check it): the
// allreduce strategy with fixed shares of a shared global batch.
void check_elastic_config(const train::JobConfig& job) {
  const auto refuse = [&](const char* key, const std::string& what) {
    throw ConfigError(job.source, key, 0,
                      fmt::format("elastic mode (train.elastic) does not support {} yet: it "
                                  "re-forms allreduce groups of any size over shares of a shared "
                                  "global batch",
                                  what));
  };
  if (job.distributed.strategy != "allreduce" && job.distributed.strategy != "local") {
    refuse("distributed.strategy", fmt::format("the {} strategy", job.distributed.strategy));
  }
  if (job.distributed.dynamic_batch) refuse("distributed.dynamic_batch", "dynamic batch sizing");
  if (!job.distributed.slowdown.empty()) refuse("distributed.slowdown", "slowdowns");
  if (job.train.class_weights != "none") refuse("train.class_weights", "class weights");
  if (!job.data.partition.empty()) refuse("data.partition", "partitions (one per worker)");
}

}  // namespace

int run_train(const TrainOptions& options, std::ostream& out) {
  train::JobConfig job = read_job_file(options.job_file, options.overrides);
  if (options.workers) job.distributed.workers = *options.workers;
  if (options.servers) job.distributed.servers = *options.servers;
  if (options.strategy) {
    job.distributed.strategy = *options.strategy;
  } else if (job.distributed.workers > 1 && job.distributed.strategy == "local") {
    job.distributed.strategy = "allreduce";
  }
  const std::string& strategy_name = job.distributed.strategy;
  if (strategy_name != "local" && strategy_name != "mirrored" && strategy_name != "allreduce" &&
      strategy_name != "ps") {
    throw ConfigError(job.source, "distributed.strategy", 0,
                      fmt::format("'{}' is not one of: local, mirrored, allreduce, ps", strategy_name));
  }
  const bool ps_job = strategy_name == "ps";
  if (job.distributed.workers < 1) {
    throw ConfigError(job.source, "distributed.workers", 0, "must be at least 1");
  }
  for (const std::string& entry : options.slowdown) {
    parse_slowdown(entry, "--slowdown", entry);  // checked here, applied per worker
    job.distributed.slowdown.push_back(entry);
  }
  if (options.output) job.output = *options.output;
  if (options.threads) job.train.threads = *options.threads;
  if (options.resume) job.resume = *options.resume;
  if (options.max_restarts) {
    if (*options.max_restarts < 0) {
      throw UsageError(
          fmt::format("--max-restarts must not be negative, got {}", *options.max_restarts));
    }
    job.train.max_restarts = *options.max_restarts;
  }

  if (options.elastic) job.train.elastic = *options.elastic;
  if (options.min_workers) job.train.min_workers = *options.min_workers;
  if (job.train.elastic) check_elastic_config(job);

  // A process of a launched job (by this launcher, mpirun or srun) trains;
  // otherwise allreduce with N workers starts them here and supervises.
  comm::LaunchOverrides overrides;
  overrides.rank = options.rank;
  overrides.world_size = options.world_size;
  overrides.coordinator = options.coordinator;
  if (job.distributed.backend == "mpi" && !overrides.coordinator &&
      options.environment.count("DTRAIN_COORDINATOR") == 0) {
    // MPI finds its peers itself: no rendezvous, so no coordinator to name.
    overrides.coordinator = "127.0.0.1:1";
  }
  const comm::LaunchInfo launch = comm::resolve_launch_env(options.environment, overrides);
  const bool is_worker = launch.world_size > 1;
  if (ps_job && is_worker) {
    // Under mpirun or srun the world is S + N: the worker count follows it.
    if (launch.world_size <= job.distributed.servers) {
      throw ConfigError(job.source, "distributed.servers", 0,
                        fmt::format("{} servers leave no worker in a job of {} processes ({}); "
                                    "start servers + workers processes",
                                    job.distributed.servers, launch.world_size, launch.source));
    }
    job.distributed.workers = launch.world_size - job.distributed.servers;
  }
  if (ps_job) check_ps_config(job);
  if (!is_worker && ((strategy_name == "allreduce" && job.distributed.workers > 1) || ps_job)) {
    LaunchOptions l;
    l.argv = options.argv;
    // ps: S servers then N workers, all running this command line.
    l.workers = static_cast<int>(job.distributed.workers + (ps_job ? job.distributed.servers : 0));
    l.environment = options.environment;
    if (ps_job) {
      const int64_t workers = job.distributed.workers;
      const int64_t min_workers = job.train.min_workers > 0 ? job.train.min_workers : 1;
      if (min_workers > workers) {
        throw ConfigError(job.source, "train.min_workers", 0,
                          fmt::format("{} is more than the job's {} worker(s)", min_workers,
                                      workers));
      }
      return run_ps_job(l, static_cast<int>(job.distributed.servers),
                        static_cast<int>(min_workers),
                        static_cast<int>(std::min<int64_t>(job.train.max_restarts, INT_MAX)), out,
                        std::cerr, Logger::stderr_logger(), Deadline::never())
          .exit_code;
    }
    if (job.train.elastic) {
      const int64_t min_workers =
          job.train.min_workers > 0 ? job.train.min_workers : job.distributed.workers;
      return run_elastic_job(l, job.name, static_cast<int>(std::min<int64_t>(min_workers, INT_MAX)),
                             static_cast<int>(std::min<int64_t>(job.train.max_restarts, INT_MAX)),
                             out, std::cerr, Logger::stderr_logger(), Deadline::never())
          .exit_code;
    }
    if (job.train.max_restarts > 0 && !job.resume) {
      throw ConfigError(job.source, "train.max_restarts", 0,
                        fmt::format("{} restarts need job.resume = true (drop --no-resume): "
                                    "a restart would otherwise train from scratch",
                                    job.train.max_restarts));
    }
    const auto restarts = static_cast<int>(std::min<int64_t>(job.train.max_restarts, INT_MAX));
    return run_with_restarts(l, restarts, out, std::cerr, Logger::stderr_logger(),
                             Deadline::never())
        .exit_code;
  }
  if (!is_worker && job.train.max_restarts > 0) {
    Logger::stderr_logger().warn(
        "train.max_restarts = {} has no effect here: only a job that `dtrain train --workers N` "
        "launches (allreduce, ps) is restarted, not a single process",
        job.train.max_restarts);
  }
  if (is_worker && strategy_name == "mirrored") {
    throw ConfigError(job.source, "distributed.strategy", 0,
                      "mirrored runs in one process; a launched job of several processes uses allreduce");
  }
  if (strategy_name == "local" && job.distributed.workers != 1) {
    throw ConfigError(job.source, "distributed.workers", 0,
                      fmt::format("strategy 'local' runs one worker, not {}", job.distributed.workers));
  }
  openblas_set_num_threads(static_cast<int>(std::max<int64_t>(1, job.train.threads)));

  // ps: a server serves and never trains; a worker's place is its index.
  const PsRole role = ps_job ? ps_role(launch.rank, static_cast<int>(job.distributed.servers)) : PsRole{};
  // (The server's own lines already say "ps server s"; a worker's get "worker w: ".)
  if (ps_job && role.server) {
    return run_ps_server(job, launch, options.environment, Logger::stderr_logger());
  }
  std::unique_ptr<Logger> ps_logger;
  if (ps_job) {
    ps_logger = role_logger(fmt::format("worker {}", role.index),
                            role.index == 0 ? LogLevel::kInfo : LogLevel::kWarn);
  }

  const Datasets data = load_data(job);
  check_input_shape(job, data.train);
  Logger& logger = ps_logger ? *ps_logger : Logger::stderr_logger();
  const bool chief = ps_job ? role.index == 0 : launch.rank == 0;
  if (!chief) logger.set_level(LogLevel::kWarn);
  if (!is_worker && job.distributed.accumulation_steps != 1) {
    throw ConfigError(job.source, "distributed.accumulation_steps", 0,
                      "gradient accumulation needs the allreduce strategy with several workers");
  }
  const auto elastic_coordinator = options.environment.find("DTRAIN_ELASTIC_COORDINATOR");
  const bool elastic = is_worker && elastic_coordinator != options.environment.end();
  if (is_worker && job.train.elastic && !elastic) {
    throw ConfigError(job.source, "train.elastic", 0,
                      fmt::format("elastic mode needs dtrain's own launcher (`dtrain train "
                                  "--workers N --elastic`); under {} a lost rank ends the whole "
                                  "job: use restart mode instead (docs/launching.md)",
                                  launch.source));
  }
  WorkerCollectives worker;
  if (!is_worker) {
    if (job.distributed.dynamic_batch) {
      logger.warn("distributed.dynamic_batch has no effect on one process: it balances the "
                  "workers of an allreduce job");
    }
    if (!job.distributed.slowdown.empty()) {
      throw ConfigError(job.source, "distributed.slowdown", 0,
                        "a slowdown applies to the worker processes of an allreduce job "
                        "(--workers N > 1)");
    }
  }
  std::unique_ptr<ElasticWorker> elastic_worker;
  std::unique_ptr<strategy::Strategy> strategy;
  strategy::PsStrategy* ps_worker = nullptr;
  if (ps_job) {
    auto made = make_ps_strategy(job, launch, role.index, options.environment, logger,
                                 make_loss(job, data.train));
    ps_worker = made.get();
    strategy = std::move(made);
  } else if (elastic) {
    elastic_worker = join_elastic_job(job, launch, options.environment, logger);
    if (!elastic_worker) return 0;  // the job finished training while it waited to join
  } else {
    if (is_worker) worker = connect_collectives(job, launch, options.environment, logger);
    strategy = make_strategy(job, is_worker ? &worker : nullptr, launch, options.environment,
                             make_loss(job, data.train));
  }

  strategy::Strategy& trained =
      elastic ? static_cast<strategy::Strategy&>(*elastic_worker) : *strategy;
  train::Trainer trainer(job, trained, logger);
  if (elastic) trainer.set_elastic(elastic_worker.get());
  std::unique_ptr<train::Callback> kill_switch;
  if (elastic || ps_job) kill_switch = test_kill_switch(options.environment, launch.rank);
  if (kill_switch) trainer.add_callback(*kill_switch);
  std::unique_ptr<train::JsonLinesWriter> metrics;
  std::unique_ptr<train::Callback> progress;
  if (chief) {
    io::default_file_system().create_directories(job.output);
    metrics = std::make_unique<train::JsonLinesWriter>(job.output + "/metrics.jsonl", job.train.log_every_steps);
    trainer.add_callback(*metrics);
    // Under a launcher the output is a pipe: plain lines, not a bar.
    const std::string mode = is_worker && options.progress == "bar" ? "plain" : options.progress;
    if (mode == "bar") {
      progress = std::make_unique<train::ProgressBar>(out);
    } else if (mode == "plain") {
      progress = std::make_unique<train::PlainProgress>(out, job.train.log_every_steps);
    }
    if (progress) trainer.add_callback(*progress);
  }
  try {
    trainer.fit(data.train, data.test);
  } catch (const JobFinished& f) {
    // Elastic: the other members completed the job while this one re-joined.
    logger.warn("{}", f.what());
  }
  // Before finish(): a ps worker's embedding rows come from the servers.
  if (trained.rank() == 0) report_test_auc(job, trained.model(), data, progress.get());
  if (ps_worker != nullptr) ps_worker->finish();  // the servers stop once every worker is done
  return 0;
}

int run_partition(const PartitionCommandOptions& options, std::ostream& out) {
  const train::JobConfig job = read_job_file(options.job_file, options.overrides);
  const Datasets data = load_data(job);
  data::PartitionOptions p;
  p.kind = options.kind;
  p.workers = options.workers;
  p.seed = options.seed;
  p.classes_per_worker = options.classes_per_worker;
  p.alpha = options.alpha;
  p.quantity_sigma = options.quantity_sigma;
  const auto parts = data::partition(data.train.labels(), data.train.num_classes(), p);
  fmt::print(out, "{} training samples of {} in {} parts ({}):\n", data.train.size(), job.name,
             options.workers, options.kind);
  out << data::format_histogram(
      data::label_histogram(parts, data.train.labels(), data.train.num_classes()));
  return 0;
}

int run_eval(const EvalOptions& options, std::ostream& out) {
  const train::JobConfig job = read_job_file(options.job_file, options.overrides);
  openblas_set_num_threads(static_cast<int>(std::max<int64_t>(1, job.train.threads)));
  const Datasets data = load_data(job);
  check_input_shape(job, data.test);
  Rng rng(job.seed);
  auto model = train::build_model(job.model, rng, job.source);
  try {
    model->load_state_dict(io::load_safetensors(options.weights), true);
  } catch (const UsageError& e) {
    throw DataError(fmt::format("{}: the weights do not fit the job's model: {}", options.weights, e.what()));
  }
  const train::EvalResult r = train::evaluate(*model, data.test, job.train.eval_batch_size);
  fmt::print(out, "{}: {} test samples: accuracy {:.2f}%, loss {:.4f}\n", options.weights, r.samples,
             100.0 * r.accuracy, r.loss);
  return 0;
}

}  // namespace dtrain::cli
