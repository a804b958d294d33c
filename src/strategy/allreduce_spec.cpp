// The `allreduce` strategy's registry entry: [distributed.allreduce] options,
// its checks, its processes (one per worker; restart and elastic modes), and
// building a worker's strategy over dtrain's collectives or MPI.
#include <fmt/format.h>

#include "comm/collectives/connect_worker.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"
#include "core/trace.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/elastic_allreduce.h"
#include "strategy/local_strategy.h"
#include "strategy/registry.h"
#ifdef DTRAIN_HAVE_MPI
#include "comm/collectives/mpi_collectives.h"
#endif

namespace dtrain::strategy {

namespace {

struct AllReduceJobOptions {
  int64_t bucket_bytes = int64_t{1} << 20;  // gradient bytes per bucket
  // Gradient bytes of the first bucket (closed early so that its allreduce
  // overlaps backward; capped at bucket_bytes).
  int64_t first_bucket_bytes = static_cast<int64_t>(AllReduceOptions{}.first_bucket_bytes);
  // Gradient bytes of the last bucket (its tail split off, since nothing
  // hides the allreduce of the bucket the last hook launches).
  int64_t last_bucket_bytes = static_cast<int64_t>(AllReduceOptions{}.last_bucket_bytes);
  int64_t accumulation_steps = 1;  // micro-batches per update
  // "native" (dtrain's collectives: deadlines, shared memory on one host,
  // ZeroMQ across hosts) or "mpi" (MPI_Allreduce, for jobs started by
  // mpirun on a fast fabric; MPI calls have no deadline).
  std::string backend = "native";
};

// What a worker's collectives live in; a base class of ConnectedAllReduce
// listed before AllReduceStrategy, so it is built before the strategy and
// destroyed after it (the strategy borrows it).
struct WorkerLink {
  std::unique_ptr<comm::Communicator> native;
#ifdef DTRAIN_HAVE_MPI
  std::unique_ptr<comm::MpiSession> mpi_session;
  std::unique_ptr<comm::MpiCollectives> mpi;
#endif
};

class ConnectedAllReduce final : private WorkerLink, public AllReduceStrategy {
 public:
  ConnectedAllReduce(WorkerLink link, std::unique_ptr<nn::Module> model,
                     const OptimizerFactory& make_optimizer, const AllReduceOptions& options,
                     LossFn loss)
      : WorkerLink(std::move(link)),
        AllReduceStrategy(std::move(model), make_optimizer, collectives_of(*this),
                          WorkerLink::native.get(), options, std::move(loss)) {}

 private:
  static comm::Collectives& collectives_of(WorkerLink& link) {
#ifdef DTRAIN_HAVE_MPI
    if (link.mpi) return *link.mpi;
#endif
    return *link.native;
  }
};

class AllReduceSpec final : public StrategySpec {
 public:
  std::string_view name() const override { return "allreduce"; }
  std::string_view summary() const override {
    return "one process per worker, gradients averaged by bucketed allreduce (the default with "
           "--workers N > 1)";
  }

  void read_options(ConfigTable& table) override {
    bucket_bytes_set_ = table.read("bucket_bytes", o_.bucket_bytes);
    first_bucket_bytes_set_ = table.read("first_bucket_bytes", o_.first_bucket_bytes);
    last_bucket_bytes_set_ = table.read("last_bucket_bytes", o_.last_bucket_bytes);
    table.read("accumulation_steps", o_.accumulation_steps);
    table.read("backend", o_.backend);
    where_ = table.lines();
    if (o_.accumulation_steps < 1) throw where_.error("accumulation_steps", "must be at least 1");
    if (o_.first_bucket_bytes < 0) throw where_.error("first_bucket_bytes", "must be at least 0");
    if (o_.last_bucket_bytes < 0) throw where_.error("last_bucket_bytes", "must be at least 0");
    check_choice(where_, "backend", o_.backend, {"native", "mpi"});
  }

  void validate(const JobFacts& job, std::vector<std::string>& /*warnings*/) const override {
    if (!multi_process(job) && o_.accumulation_steps != 1) {
      throw where_.error("accumulation_steps",
                         "gradient accumulation needs the allreduce strategy with several "
                         "workers");
    }
    if (job.elastic) check_elastic(job);
    if (job.privacy) check_privacy(job);
    if ((job.compression || job.local_sgd) && o_.backend != "native") {
      throw where_.error("backend",
                         "compression and local SGD run over dtrain's own collectives: backend "
                         "must be 'native'");
    }
    if ((job.compression || job.local_sgd) && !multi_process(job)) {
      throw job.where.error(job.compression ? "compression.type" : "compression.local_steps",
                            "needs several workers (--workers N)");
    }
    if (!job.launched && !job.elastic && job.max_restarts > 0 && !job.resume) {
      throw job.where.error("train.max_restarts",
                            fmt::format("{} restarts need job.resume = true (drop --no-resume): "
                                        "a restart would otherwise train from scratch",
                                        job.max_restarts));
    }
  }

  ProcessPlan plan(const JobFacts& job) const override {
    ProcessPlan p;
    p.processes = static_cast<int>(job.workers);
    p.min_workers = static_cast<int>(job.min_workers > 0 ? job.min_workers : job.workers);
    return p;
  }

  bool multi_process(const JobFacts& job) const override { return job.launched || job.workers > 1; }
  bool supports_guard() const override { return true; }
  bool sums_gradients(const JobFacts& /*job*/) const override { return true; }
  // The mpi backend speaks MPI only (its fabric's own security applies).
  bool uses_own_wire(const JobFacts& job) const override {
    return job.launched && o_.backend != "mpi";
  }

  std::unique_ptr<Strategy> build(const BuildContext& c) const override {
    const comm::LaunchInfo& launch = *c.launch;
    // Under dtrain's launcher (its coordinator) or a per-host agent (etcd).
    const bool elastic_launch =
        !launch.settings.elastic_coordinator.empty() || !launch.settings.rdzv.empty();
    if (c.facts.elastic && !elastic_launch) {
      throw c.facts.where.error(
          "train.elastic",
          fmt::format("elastic mode needs dtrain's own launcher (`dtrain train --workers N "
                      "--elastic`); under {} a lost rank ends the whole job: use restart mode "
                      "instead (docs/launching.md)",
                      launch.source));
    }
    if (!launch.launched()) {
      // A group of one: nothing to average.
      return std::make_unique<LocalStrategy>(c.make_model(), c.make_optimizer, c.loss);
    }
    if (elastic_launch) return build_elastic(c);
    return std::make_unique<ConnectedAllReduce>(connect(c), c.make_model(), c.make_optimizer,
                                                options(c), c.loss);
  }

  std::unique_ptr<StrategySpec> clone() const override {
    return std::make_unique<AllReduceSpec>(*this);
  }

 private:
  // What elastic mode supports: fixed shares of a shared global batch.
  void check_elastic(const JobFacts& job) const {
    const auto refuse = [&](std::string_view key, const std::string& what) {
      return job.where.error(key,
                             fmt::format("elastic mode (train.elastic) does not support {} yet: "
                                         "it re-forms allreduce groups of any size over shares "
                                         "of a shared global batch",
                                         what));
    };
    if (job.dynamic_batch) throw refuse("distributed.dynamic_batch", "dynamic batch sizing");
    if (job.slowdown) throw refuse("distributed.slowdown", "slowdowns");
    if (job.class_weights) throw refuse("train.class_weights", "class weights");
    if (job.partitioned) throw refuse("data.partition", "partitions (one per worker)");
    if (o_.backend != "native") {
      throw where_.error("backend",
                         "elastic mode re-forms groups over dtrain's own collectives: "
                         "backend must be 'native'");
    }
    const int64_t min_workers = job.min_workers > 0 ? job.min_workers : job.workers;
    if (min_workers > job.workers) {
      throw job.where.error(
          "train.min_workers",
          fmt::format("{} is more than the job's {} worker(s)", min_workers, job.workers));
    }
  }

  // DP-SGD (privacy.enabled) needs one plain sum of the workers' clipped
  // gradients per update over a fixed group (train/dp_sgd.h).
  void check_privacy(const JobFacts& job) const {
    const auto refuse = [](const KeyLines& where, std::string_view key, std::string_view what) {
      return where.error(key, fmt::format("DP-SGD (privacy.enabled) sums every worker's clipped "
                                          "gradients once per update; it does not combine with {}",
                                          what));
    };
    if (o_.accumulation_steps != 1) {
      throw refuse(where_, "accumulation_steps", "gradient accumulation");
    }
    if (job.compression) throw refuse(job.where, "compression.type", "gradient compression");
    if (job.local_sgd) throw refuse(job.where, "compression.local_steps", "local SGD");
    if (job.dynamic_batch) {
      throw refuse(job.where, "distributed.dynamic_batch", "dynamic batch sizing");
    }
    if (job.elastic) throw refuse(job.where, "train.elastic", "elastic mode");
  }

  AllReduceOptions options(const BuildContext& c) const {
    AllReduceOptions o;
    o.bucket_bytes = static_cast<size_t>(o_.bucket_bytes);
    o.first_bucket_bytes = static_cast<size_t>(o_.first_bucket_bytes);
    o.last_bucket_bytes = static_cast<size_t>(o_.last_bucket_bytes);
    if (c.compression.compresses() && !bucket_bytes_set_) {
      // A compressed bucket costs a few collectives whatever its size, each
      // paying the link's latency: fewer, larger buckets (DDP's 25 MiB, as
      // its PowerSGD hook runs with) unless the job chose a size.
      o.bucket_bytes = kCompressedBucketBytes;
      if (!first_bucket_bytes_set_) o.first_bucket_bytes = kCompressedBucketBytes;
      if (!last_bucket_bytes_set_) o.last_bucket_bytes = kCompressedBucketBytes;
    }
    o.accumulation_steps = o_.accumulation_steps;
    o.timeout = c.timeout;
    o.dynamic_batch = c.dynamic_batch;
    o.compression = c.compression;
    o.logger = c.logger;
    o.trace = c.trace;
    return o;
  }

  WorkerLink connect(const BuildContext& c) const {
    const comm::LaunchInfo& launch = *c.launch;
    WorkerLink link;
    if (o_.backend == "mpi") {
#ifdef DTRAIN_HAVE_MPI
      link.mpi_session = std::make_unique<comm::MpiSession>(nullptr, nullptr);
      link.mpi = std::make_unique<comm::MpiCollectives>();
      if (link.mpi->size() != launch.world_size || link.mpi->rank() != launch.rank) {
        throw where_.error(
            "backend", fmt::format("MPI says rank {} of {}, the environment ({}) rank {} of "
                                   "{}: the mpi backend needs a job started by mpirun",
                                   link.mpi->rank(), link.mpi->size(), launch.source, launch.rank,
                                   launch.world_size));
      }
      return link;
#else
      throw where_.error("backend", "this dtrain was built without MPI");
#endif
    }
    TraceSpan span(c.trace, "rendezvous", "setup");
    link.native = comm::connect_worker(c.job_name, launch, {c.timeout, c.heartbeat_timeout, c.link},
                                       *c.logger);
    return link;
  }

  std::unique_ptr<Strategy> build_elastic(const BuildContext& c) const {
    const comm::LaunchInfo& launch = *c.launch;
    ElasticAllReduceOptions o;
    o.job_name = c.job_name;
    o.slot = launch.rank;
    o.slots = launch.world_size;
    o.coordinator = launch.settings.elastic_coordinator;
    if (!launch.settings.rdzv.empty()) {
      const comm::RdzvUrl url = comm::parse_rdzv_url(launch.settings.rdzv, "DTRAIN_RDZV");
      comm::EtcdRendezvousOptions e;
      e.endpoint = url.endpoint;
      e.job_id = url.job_id;
      e.min_workers = launch.settings.rdzv_min_workers;
      e.max_workers = launch.settings.rdzv_max_workers;
      e.lease_ttl = std::chrono::seconds(launch.settings.rdzv_lease_ttl_s);
      o.etcd = e;
    }
    o.secret = launch.settings.job_secret;
    o.encrypt = launch.settings.encrypt;
    o.listen_host = launch.settings.listen_host;
    o.advertise_host = launch.settings.advertise_host;
    o.ipc_dir = launch.settings.socket_dir;
    o.rendezvous_timeout = c.timeout;
    o.heartbeat_timeout = c.heartbeat_timeout;
    o.allreduce = options(c);
    return std::make_unique<ElasticAllReduce>(o, c.make_model, c.make_optimizer, c.loss, *c.logger);
  }

  static constexpr size_t kCompressedBucketBytes = size_t{25} << 20;

  AllReduceJobOptions o_;
  bool bucket_bytes_set_ = false;        // the job file named distributed.allreduce.bucket_bytes
  bool first_bucket_bytes_set_ = false;  // ... and first_bucket_bytes
  bool last_bucket_bytes_set_ = false;   // ... and last_bucket_bytes
  KeyLines where_;
};

}  // namespace

std::unique_ptr<StrategySpec> make_allreduce_spec() { return std::make_unique<AllReduceSpec>(); }

}  // namespace dtrain::strategy
