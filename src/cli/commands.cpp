#include "cli/commands.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ostream.h>

#include "cli/elastic_launch.h"
#include "cli/elastic_worker.h"
#include "cli/job_file.h"
#include "cli/launcher.h"
#include "cli/worker_comm.h"
#include "comm/communicator.h"
#include "comm/launch_env.h"
#ifdef DTRAIN_HAVE_MPI
#include "comm/mpi_collectives.h"
#endif
#include "core/error.h"
#include "core/log.h"
#include "data/csv.h"
#include "data/idx.h"
#include "data/partition.h"
#include "data/synthetic.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "train/callbacks.h"
#include "train/model_builder.h"
#include "train/trainer.h"

namespace dtrain::cli {

namespace {

struct Datasets {
  data::TensorDataset train;
  data::TensorDataset test;
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

std::unique_ptr<strategy::Strategy> make_strategy(const train::JobConfig& job, WorkerCollectives* worker) {
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
#ifdef DTRAIN_HAVE_MPI
    if (worker->mpi) {
      return std::make_unique<strategy::AllReduceStrategy>(
          std::move(model), make_optimizer, static_cast<comm::Collectives&>(*worker->mpi), o);
    }
#endif
    return std::make_unique<strategy::AllReduceStrategy>(std::move(model), make_optimizer,
                                                         *worker->native, o);
  }
  if (job.distributed.strategy == "mirrored") {
    auto make_replica = [&job] {
      Rng replica_rng(job.seed);
      return std::unique_ptr<nn::Module>(train::build_model(job.model, replica_rng, job.source));
    };
    return std::make_unique<strategy::MirroredStrategy>(std::move(model), make_replica,
                                                        job.distributed.workers, make_optimizer);
  }
  return std::make_unique<strategy::LocalStrategy>(std::move(model), make_optimizer);
}

}  // namespace

int run_train(const TrainOptions& options, std::ostream& out) {
  train::JobConfig job = read_job_file(options.job_file, options.overrides);
  if (options.workers) job.distributed.workers = *options.workers;
  if (options.strategy) {
    job.distributed.strategy = *options.strategy;
  } else if (job.distributed.workers > 1 && job.distributed.strategy == "local") {
    job.distributed.strategy = "allreduce";
  }
  const std::string& strategy_name = job.distributed.strategy;
  if (strategy_name != "local" && strategy_name != "mirrored" && strategy_name != "allreduce") {
    throw ConfigError(job.source, "distributed.strategy", 0,
                      fmt::format("'{}' is not one of: local, mirrored, allreduce", strategy_name));
  }
  if (job.distributed.workers < 1) {
    throw ConfigError(job.source, "distributed.workers", 0, "must be at least 1");
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
  if (!is_worker && strategy_name == "allreduce" && job.distributed.workers > 1) {
    LaunchOptions l;
    l.argv = options.argv;
    l.workers = static_cast<int>(job.distributed.workers);
    l.environment = options.environment;
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
        "launches (allreduce) is restarted, not a single process",
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

  const Datasets data = load_data(job);
  check_input_shape(job, data.train);
  Logger& logger = Logger::stderr_logger();
  const bool chief = launch.rank == 0;
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
  std::unique_ptr<ElasticWorker> elastic_worker;
  std::unique_ptr<strategy::Strategy> strategy;
  if (elastic) {
    elastic_worker = join_elastic_job(job, launch, options.environment, logger);
    if (!elastic_worker) return 0;  // the job finished training while it waited to join
  } else {
    if (is_worker) worker = connect_collectives(job, launch, options.environment, logger);
    strategy = make_strategy(job, is_worker ? &worker : nullptr);
  }

  strategy::Strategy& trained =
      elastic ? static_cast<strategy::Strategy&>(*elastic_worker) : *strategy;
  train::Trainer trainer(job, trained, logger);
  if (elastic) trainer.set_elastic(elastic_worker.get());
  std::unique_ptr<train::Callback> kill_switch;
  if (elastic) kill_switch = elastic_test_kill_switch(options.environment, launch.rank);
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
