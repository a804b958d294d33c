#include "cli/commands.h"

#include <cblas.h>

#include <iostream>

#include <fmt/format.h>
#include <fmt/ostream.h>

#include "cli/job_file.h"
#include "cli/launcher.h"
#include "cli/worker_comm.h"
#include "comm/communicator.h"
#include "comm/launch_env.h"
#include "core/error.h"
#include "core/log.h"
#include "data/csv.h"
#include "data/idx.h"
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

std::unique_ptr<strategy::Strategy> make_strategy(const train::JobConfig& job, comm::Communicator* worker) {
  Rng rng(job.seed);
  auto model = train::build_model(job.model, rng, job.source);
  auto make_optimizer = [&job](std::vector<Variable> params) {
    return optim::make_optimizer(job.optimizer, std::move(params));
  };
  if (worker != nullptr) {
    strategy::AllReduceOptions o;
    o.bucket_bytes = static_cast<size_t>(job.distributed.bucket_bytes);
    o.timeout = std::chrono::milliseconds(job.distributed.timeout_ms);
    return std::make_unique<strategy::AllReduceStrategy>(std::move(model), make_optimizer,
                                                         *worker, o);
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

  // A process of a launched job (by this launcher, mpirun or srun) trains;
  // otherwise allreduce with N workers starts them here and supervises.
  const comm::LaunchInfo launch = comm::resolve_launch_env(options.environment);
  const bool is_worker = launch.world_size > 1;
  if (!is_worker && strategy_name == "allreduce" && job.distributed.workers > 1) {
    LaunchOptions l;
    l.argv = options.argv;
    l.workers = static_cast<int>(job.distributed.workers);
    l.environment = options.environment;
    Launcher launcher(l, out, std::cerr, Logger::stderr_logger());
    return launcher.run(Deadline::never()).exit_code;
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
  std::unique_ptr<comm::Communicator> communicator;
  if (is_worker) {
    communicator = connect_worker(job.name, launch, options.environment,
                                  std::chrono::milliseconds(job.distributed.timeout_ms), logger);
  }
  std::unique_ptr<strategy::Strategy> strategy = make_strategy(job, communicator.get());

  train::Trainer trainer(job, *strategy, logger);
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
  trainer.fit(data.train, data.test);
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
