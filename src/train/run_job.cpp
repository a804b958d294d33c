#include "train/run_job.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "data/class_weights.h"
#include "io/file_system.h"
#include "strategy/class_weighted_loss.h"
#include "strategy/compute_timer.h"
#include "tensor/intra_op.h"
#include "train/datasets.h"
#include "train/job_file.h"
#include "train/metrics.h"
#include "train/model_builder.h"
#include "train/rank_metrics.h"
#include "train/tensorboard_callback.h"
#include "train/trace_setup.h"
#include "train/trainer.h"

namespace dtrain::train {

namespace {

// This worker's slowdown factor from distributed.slowdown (1: none): the
// last entry naming its index, else the last "all" entry.
double slowdown_for(const JobConfig& job, int64_t index, int64_t workers) {
  double factor = 1.0;
  double all_factor = 1.0;
  bool named = false;
  for (const std::string& entry : job.distributed.slowdown) {
    const Slowdown s = parse_slowdown(entry, job.source, "distributed.slowdown");
    if (s.rank >= workers) {
      throw job.lines.error(
          "distributed.slowdown",
          fmt::format("'{}' names rank {}, but the job has {} workers", entry, s.rank, workers));
    }
    if (s.rank == Slowdown::kAllRanks) all_factor = s.factor;
    if (s.rank == index) {
      factor = s.factor;
      named = true;
    }
  }
  return named ? factor : all_factor;
}

strategy::LossFn make_loss(const JobConfig& job, const data::TensorDataset& train) {
  if (job.train.class_weights == "balanced") {
    return strategy::class_weighted_cross_entropy_loss(
        data::balanced_class_weights(train.labels(), train.num_classes()));
  }
  return strategy::cross_entropy_loss();
}

// A logger that prefixes every line with the process's role ("worker 1: ")
// and forwards it to `base`; non-chief workers log warnings only.
std::unique_ptr<Logger> role_logger(Logger& base, const std::string& name, bool quiet) {
  auto sink = [&base, prefix = name.empty() ? std::string() : name + ": "](
                  LogLevel level, std::string_view message) {
    base.log(level, prefix + std::string(message));
  };
  return std::make_unique<Logger>(quiet ? LogLevel::kWarn : LogLevel::kInfo, std::move(sink));
}

// A binary job's held-out ROC AUC (the model's probability of class 1) and,
// on generated clicks, the generating model's AUC on the same samples: one
// line through `progress` (when there is one) and an "auc" event in the
// metrics file. Skipped when the test set lacks either class.
void report_test_auc(const JobConfig& job, nn::Module& model, const Datasets& data,
                     Callback* progress) {
  const std::vector<int64_t>& labels = data.test.labels();
  const auto positives = std::count(labels.begin(), labels.end(), int64_t{1});
  if (data.test.num_classes() != 2 || positives == 0 || positives == data.test.size()) return;
  const double auc =
      roc_auc(positive_class_probability(model, data.test, job.train.eval_batch_size), labels);
  nlohmann::json event{{"event", "auc"}, {"test_samples", data.test.size()}, {"test_auc", auc}};
  std::string line = fmt::format("test AUC {:.4f} on {} samples", auc, data.test.size());
  if (!data.test_click_probability.empty()) {
    const double generating = roc_auc(data.test_click_probability, labels);
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

strategy::BuildContext build_context(const JobConfig& job, const comm::LaunchInfo& launch,
                                     const strategy::JobFacts& facts, Logger& logger) {
  strategy::BuildContext c;
  c.launch = &launch;
  c.job_name = job.name;
  c.make_model = [&job] {
    Rng rng(job.seed);
    return std::unique_ptr<nn::Module>(build_model(job.model, rng, job.source));
  };
  c.make_optimizer = [&job](std::vector<Variable> params) {
    return nn::make_optimizer(job.optimizer, std::move(params));
  };
  c.loss = strategy::cross_entropy_loss();
  c.optimizer = job.optimizer;
  c.seed = job.seed;
  c.facts = facts;
  c.output = job.output;
  c.keep_checkpoints = job.train.keep_checkpoints;
  c.timeout = std::chrono::milliseconds(job.distributed.timeout_ms);
  c.heartbeat_timeout = std::chrono::milliseconds(job.distributed.heartbeat_timeout_ms);
  c.dynamic_batch.enabled = job.distributed.dynamic_batch;
  c.dynamic_batch.rebalance_every = job.distributed.rebalance_every;
  c.dynamic_batch.smoothing = job.distributed.smoothing;
  c.dynamic_batch.min_share = job.distributed.min_share;
  c.dynamic_batch.max_share = job.distributed.max_share;
  if (job.distributed.link_mbps > 0.0) {
    c.link = comm::LinkShaperOptions{job.distributed.link_mbps, job.distributed.link_latency_ms};
  }
  c.compression = job.compression.settings;
  c.compression.codec.seed = job.seed;
  c.logger = &logger;
  return c;
}

// The chief's callbacks: metrics.jsonl and progress lines.
struct ChiefCallbacks {
  std::unique_ptr<JsonLinesWriter> metrics;
  std::unique_ptr<Callback> progress;
};

ChiefCallbacks chief_callbacks(const JobConfig& job, const comm::LaunchInfo& launch,
                               const RunOptions& options) {
  ChiefCallbacks c;
  io::default_file_system().create_directories(job.output);
  c.metrics =
      std::make_unique<JsonLinesWriter>(job.output + "/metrics.jsonl", job.train.log_every_steps);
  if (options.out == nullptr) return c;
  // Under a launcher the output is a pipe: plain lines, not a bar.
  const std::string mode =
      launch.launched() && options.progress == "bar" ? "plain" : options.progress;
  if (mode == "bar") {
    c.progress = std::make_unique<ProgressBar>(*options.out);
  } else if (mode == "plain") {
    c.progress = std::make_unique<PlainProgress>(*options.out, job.train.log_every_steps);
  }
  return c;
}

// A worker: data, model, strategy, trainer.
int train_worker(const JobConfig& job, const comm::LaunchInfo& launch,
                 const strategy::StrategySpec& spec, const strategy::ProcessRole& role,
                 strategy::BuildContext context, const RunOptions& options, Logger& logger) {
  const Datasets data = load_datasets(job);
  check_input_shape(job, data.train);
  context.loss = make_loss(job, data.train);
  if (options.hooks.before_build) options.hooks.before_build();
  // Declared before the strategy: outlives it and the trainer.
  const std::unique_ptr<obs::TraceWriter> trace =
      open_trace(job, role.index, spec.workers(context.facts));
  context.trace = trace.get();
  std::unique_ptr<strategy::Strategy> strategy;
  try {
    strategy = spec.build(context);
  } catch (const strategy::JobFinished& f) {
    logger.warn("{}", f.what());
    return 0;
  }
  const double slowdown = slowdown_for(job, role.index, spec.workers(context.facts));
  if (slowdown != 1.0) {
    strategy->set_compute_timer(std::make_unique<strategy::SlowdownTimer>(slowdown));
  }
  if (options.hooks.modelled_compute) {
    if (const auto t = options.hooks.modelled_compute(role.index)) {
      strategy->set_compute_timer(
          std::make_unique<strategy::ModelledTimer>(t->fixed_s, t->per_row_s));
    }
  }
  // Declared before the trainer: outlives fit(); released when the worker ends.
  std::optional<ChiefOutputLock> output_lock;
  Trainer trainer(job, *strategy, logger);
  if (options.chief_output_lock) {
    output_lock.emplace(*options.chief_output_lock, logger);
    trainer.set_output_lock(&*output_lock);
  }
  trainer.set_trace(trace.get());
  std::unique_ptr<Callback> hook;
  if (options.hooks.trainer_callback) hook = options.hooks.trainer_callback(launch.rank);
  if (hook) trainer.add_callback(*hook);
  // Every worker's own line for the live dashboard (<output>/ranks/).
  RankMetricsWriter rank_metrics(job.output, launch.launched() ? launch.rank : role.index,
                                 job.train.log_every_steps, job.train.batch_size,
                                 [&strategy] { return strategy->rank(); });
  trainer.add_callback(rank_metrics);
  ChiefCallbacks chief;
  if (role.chief) {
    chief = chief_callbacks(job, launch, options);
    trainer.add_callback(*chief.metrics);
    if (chief.progress) trainer.add_callback(*chief.progress);
  }
  std::unique_ptr<TensorBoardCallback> tensorboard;
  if (job.train.tensorboard) {
    const TensorBoardOptions tb{.folder = job.output + "/tensorboard",
                                .worker = role.index,
                                .chief = role.chief,
                                .log_every_steps = job.train.log_every_steps,
                                .histogram_every_steps = job.train.histogram_every_steps,
                                .batch_shares = job.distributed.dynamic_batch};
    tensorboard = std::make_unique<TensorBoardCallback>(tb, strategy->model());
    trainer.add_callback(*tensorboard);
  }
  try {
    trainer.fit(data.train, data.test);
  } catch (const strategy::JobFinished& f) {
    logger.warn("{}", f.what());
    return 0;
  } catch (const strategy::LeftGroup& f) {
    logger.warn("{}", f.what());
    return 0;
  }
  // Before finish(): a ps worker's embedding rows come from the servers.
  if (strategy->rank() == 0) report_test_auc(job, strategy->model(), data, chief.progress.get());
  strategy->finish();
  if (trace) trace->close();
  return 0;
}

}  // namespace

strategy::JobFacts job_facts(const JobConfig& job, const comm::LaunchInfo& launch) {
  strategy::JobFacts f;
  f.workers = job.distributed.workers;
  f.elastic = job.train.elastic;
  f.max_restarts = job.train.max_restarts;
  f.min_workers = job.train.min_workers;
  f.resume = job.resume;
  f.dynamic_batch = job.distributed.dynamic_batch;
  f.slowdown = !job.distributed.slowdown.empty();
  f.class_weights = job.train.class_weights != "none";
  f.partitioned = !job.data.partition.empty();
  f.compression = job.compression.settings.compresses();
  f.local_sgd = job.compression.settings.local_sgd();
  f.guard = job.compression.guard.enabled;
  f.privacy = job.privacy.enabled;
  f.launched = launch.launched();
  f.launched_world_size = launch.world_size;
  f.launched_by = launch.source;
  f.launcher_private_ipc = !launch.launched() && launch.settings.ps_endpoints.empty() &&
                           !launch.settings.tcp_only && !launch.settings.encrypt &&
                           !job.security.encrypt;
  f.where = job.lines;
  return f;
}

std::shared_ptr<const strategy::StrategySpec> job_strategy(const JobConfig& job,
                                                           const strategy::JobFacts& facts,
                                                           Logger& logger) {
  std::string name = job.distributed.strategy;
  if (name.empty()) name = facts.launched || facts.workers > 1 ? "allreduce" : "local";
  std::shared_ptr<const strategy::StrategySpec> spec;
  if (const auto it = job.distributed.strategies.find(name);
      it != job.distributed.strategies.end()) {
    spec = it->second;
  } else {
    spec = strategy::make_strategy_spec(name, job.lines, "distributed.strategy");
  }
  std::vector<std::string> warnings;
  spec->validate(facts, warnings);
  if (facts.guard && !spec->supports_guard()) {
    throw job.lines.error("compression.guard",
                          fmt::format("the convergence guard watches the allreduce strategy's "
                                      "runs, not '{}' (its workers do not all see every "
                                      "update's loss)",
                                      spec->name()));
  }
  if (job.privacy.enabled && !spec->sums_gradients(facts)) {
    throw job.lines.error("privacy.enabled", dp_strategy_refusal(spec->name()));
  }
  for (const std::string& w : warnings) logger.warn("{}", w);
  return spec;
}

LaunchPlan launch_plan(const JobConfig& job, const comm::LaunchInfo& launch, Logger& logger) {
  const strategy::JobFacts facts = job_facts(job, launch);
  const auto spec = job_strategy(job, facts, logger);
  worker_link(job, 0, spec->workers(facts));  // before any process starts
  LaunchPlan plan;
  plan.launch = !launch.launched() && spec->multi_process(facts);
  const strategy::ProcessPlan p = spec->plan(facts);
  plan.processes = p.processes;
  plan.servers = p.servers;
  plan.replace_failed = p.replace_failed;
  plan.min_workers = p.min_workers;
  plan.essential_slots = p.essential_slots;
  plan.takeover_replicas = p.takeover_replicas;
  plan.slot_name = p.slot_name;
  return plan;
}

std::string strategy_help() {
  std::string text;
  for (const std::string& name : strategy::strategy_names()) {
    const auto spec = strategy::make_strategy_spec(name, KeyLines(), "strategy");
    text += fmt::format("{}{}: {}", text.empty() ? "" : "; ", name, spec->summary());
  }
  return text;
}

namespace {

// A process of a launched job that speaks dtrain's wire needs a job secret,
// or --insecure on purpose (then it says so on every rank).
void check_job_secret(const strategy::StrategySpec& spec, const strategy::JobFacts& facts,
                      const comm::LaunchInfo& launch, Logger& logger) {
  if (!spec.uses_own_wire(facts) || !launch.settings.job_secret.empty()) return;
  if (launch.settings.insecure) {
    logger.warn(
        "rank {} of {}: running WITHOUT a job secret (--insecure or DTRAIN_INSECURE=1): "
        "anyone who can reach this job's ports can join it as a rank, stop it or send "
        "it updates; use this on a trusted network only",
        launch.rank, launch.world_size);
    return;
  }
  throw ConfigError(fmt::format(
      "rank {} of {} (started by {}) has no job secret: the frames of a multi-process job are "
      "authenticated with DTRAIN_JOB_SECRET, and without one anyone who can reach the job's "
      "ports can join it as a rank, stop it or poison its model. Make a key file and give every "
      "rank the same one: `dtrain keygen job.key`, then `security.key_file` in the job or "
      "`mpirun -x DTRAIN_KEY_FILE=$PWD/job.key ...` (OpenMPI) or `srun ...` (Slurm passes the "
      "environment on), with the file on shared storage or copied to each host (docs/security.md); "
      "or export a secret instead and `mpirun -x DTRAIN_JOB_SECRET ...`. To run without one on "
      "purpose, on a trusted network, pass --insecure to every rank or set DTRAIN_INSECURE=1. "
      "(`dtrain train --workers N` makes a secret itself.)",
      launch.rank, launch.world_size, launch.source));
}

}  // namespace

std::optional<comm::LinkShaperOptions> worker_link(const JobConfig& job, int64_t index,
                                                   int64_t workers) {
  const DistributedConfig& d = job.distributed;
  if (!d.slow_link.empty() && d.link_mbps == 0.0) {
    throw job.lines.error("distributed.slow_link",
                          "needs distributed.link_mbps (the bandwidth it slows down)");
  }
  double factor = 1.0;
  for (const std::string& entry : d.slow_link) {
    const SlowLink s = parse_slow_link(entry, job.source, "distributed.slow_link");
    if (s.rank >= workers) {
      throw job.lines.error(
          "distributed.slow_link",
          fmt::format("'{}' names rank {}, but the job has {} workers", entry, s.rank, workers));
    }
    if (s.rank == index) factor = s.factor;
  }
  if (d.link_mbps == 0.0) return std::nullopt;
  return comm::LinkShaperOptions{d.link_mbps / factor, d.link_latency_ms * factor};
}

void set_compute_threads(const JobConfig& job) {
  const int threads = static_cast<int>(std::max<int64_t>(1, job.train.threads));
  // OpenBLAS stays at one thread: the kernels and the dense layers' GEMMs
  // split over the intra-op team, and OpenBLAS's own threads, which spin
  // after each call, would take a core from that team.
  openblas_set_num_threads(1);
  tensor::set_intra_op_threads(threads);
}

int run_job(const JobConfig& job, const comm::LaunchInfo& launch, const RunOptions& options) {
  Logger& base = options.logger != nullptr ? *options.logger : Logger::stderr_logger();
  const strategy::JobFacts facts = job_facts(job, launch);
  const auto spec = job_strategy(job, facts, base);
  check_job_secret(*spec, facts, launch, base);
  slowdown_for(job, 0, spec->workers(facts));  // every entry names a worker
  worker_link(job, 0, spec->workers(facts));   // likewise, and has a link to slow
  set_compute_threads(job);
  const strategy::ProcessRole role = spec->role(facts, launch);
  // A server's own lines say which server wrote them; a worker's get its name.
  const auto logger =
      role_logger(base, role.server ? std::string() : role.name, !role.server && !role.chief);
  strategy::BuildContext context = build_context(job, launch, facts, *logger);
  if (!role.server) context.link = worker_link(job, role.index, spec->workers(facts));
  context.on_server_version = options.hooks.on_server_version;
  if (role.server) return spec->serve(context);
  return train_worker(job, launch, *spec, role, std::move(context), options, *logger);
}

}  // namespace dtrain::train
