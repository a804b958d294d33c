// The `gossip` strategy's registry entry: [distributed.gossip] options, its
// checks, its processes (one per worker; a failed worker is replaced in
// place and the others go on without it meanwhile) and building a worker's
// GossipStrategy over a comm::PeerLink (docs/gossip.md).
#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "comm/peer/connect_peer_link.h"
#include "core/error.h"
#include "core/trace.h"
#include "strategy/gossip_strategy.h"
#include "strategy/local_strategy.h"
#include "strategy/registry.h"

namespace dtrain::strategy {

namespace {

struct GossipJobOptions {
  std::string mode = "sync";      // "sync" (D-PSGD) or "async" (AD-PSGD)
  std::string topology = "ring";  // a gossip::topology_names() entry
  int64_t consensus_every = 100;  // steps between consensus measurements; 0: at evaluations
  // CHOCO's gamma_c (with [compression]); unset: default_consensus_step().
  std::optional<double> consensus_step;
};

class GossipSpec final : public StrategySpec {
 public:
  std::string_view name() const override { return "gossip"; }
  std::string_view summary() const override {
    return "decentralized: each worker averages its model with its topology's neighbours "
           "(sync D-PSGD or async AD-PSGD), no server, no global barrier";
  }

  void read_options(ConfigTable& table) override {
    table.read("mode", o_.mode);
    table.read("topology", o_.topology);
    table.read("consensus_every", o_.consensus_every);
    double step = 0.0;
    if (table.read("consensus_step", step)) o_.consensus_step = step;
    where_ = table.lines();
    check_choice(where_, "mode", o_.mode, {"sync", "async"});
    const std::vector<std::string> kinds = gossip::topology_names();
    if (std::find(kinds.begin(), kinds.end(), o_.topology) == kinds.end()) {
      throw where_.error(
          "topology", fmt::format("'{}' is not one of: {}", o_.topology, fmt::join(kinds, ", ")));
    }
    if (o_.consensus_step && !(*o_.consensus_step > 0.0 && *o_.consensus_step <= 1.0)) {
      throw where_.error("consensus_step",
                         fmt::format("must be in (0, 1], got {}", *o_.consensus_step));
    }
    if (o_.consensus_every < 0) {
      throw where_.error(
          "consensus_every",
          fmt::format("must be 0 (only at evaluations) or more, got {}", o_.consensus_every));
    }
  }

  void validate(const JobFacts& job, std::vector<std::string>& /*warnings*/) const override {
    if (job.elastic) {
      throw job.where.error("train.elastic",
                            "gossip needs no elastic mode: a dead worker is dropped from its "
                            "neighbours' mixing and the others go on (use --max-restarts to "
                            "replace it)");
    }
    if (job.dynamic_batch) {
      throw job.where.error("distributed.dynamic_batch",
                            "dynamic batch sizing balances synchronous steps of one group; "
                            "gossip workers have none to balance (AD-PSGD already lets a slow "
                            "worker fall behind)");
    }
    if (job.local_sgd || job.guard) {
      throw job.where.error(job.local_sgd ? "compression.local_steps" : "compression.guard",
                            "not for gossip: its compression is CHOCO-SGD's compressed model "
                            "differences (compression.type), with neither local steps nor a "
                            "guard");
    }
    if (job.compression) {
      // CHOCO-SGD (docs/gossip.md): every worker keeps copies of its fixed
      // neighbours' models, updated step by step in lockstep.
      if (o_.mode != "sync") {
        throw where_.error("mode",
                           "compression (CHOCO-SGD) needs mode \"sync\": its neighbours' model "
                           "copies are updated in lockstep; use async without compression");
      }
      if (o_.topology == "one-peer-exponential") {
        throw where_.error("topology",
                           "compression (CHOCO-SGD) needs a fixed topology (its copies of the "
                           "neighbours' models need fixed neighbours), not one-peer-exponential");
      }
      if (job.max_restarts > 0) {
        throw job.where.error(
            "train.max_restarts",
            "gossip with compression (CHOCO-SGD) cannot replace a failed worker: its "
            "neighbours' copies of its model would not match the replacement's; set it to 0 "
            "(a dead worker is dropped and the others go on)");
      }
    }
    const int64_t workers = StrategySpec::workers(job);
    const int64_t min_workers = job.min_workers > 0 ? job.min_workers : 1;
    if (min_workers > workers) {
      throw job.where.error(
          "train.min_workers",
          fmt::format("{} is more than the job's {} worker(s)", min_workers, workers));
    }
  }

  ProcessPlan plan(const JobFacts& job) const override {
    ProcessPlan p;
    p.processes = static_cast<int>(job.workers);
    p.replace_failed = true;
    p.min_workers = static_cast<int>(job.min_workers > 0 ? job.min_workers : 1);
    // The chief writes the metrics and checkpoints (a documented limitation).
    p.essential_slots = 1;
    p.slot_name = [](int slot) { return fmt::format("worker {}", slot); };
    return p;
  }

  bool multi_process(const JobFacts& job) const override { return job.launched || job.workers > 1; }

  ProcessRole role(const JobFacts& job, const comm::LaunchInfo& launch) const override {
    ProcessRole r = StrategySpec::role(job, launch);
    r.name = fmt::format("worker {}", r.index);
    return r;
  }

  std::unique_ptr<Strategy> build(const BuildContext& c) const override {
    const comm::LaunchInfo& launch = *c.launch;
    if (!launch.launched()) {
      // One worker: nothing to average with.
      return std::make_unique<LocalStrategy>(c.make_model(), c.make_optimizer, c.loss);
    }
    GossipOptions o = options();
    o.timeout = c.timeout;
    o.seed = c.seed;
    o.replacement = launch.settings.restart_count > 0;
    if (c.compression.compresses()) {
      o.compression = c.compression;
      o.consensus_step = o_.consensus_step.value_or(default_consensus_step(c.compression.codec));
    }
    std::unique_ptr<comm::PeerLink> link;
    {
      TraceSpan span(c.trace, "rendezvous", "setup");
      comm::PeerLinkSettings settings;
      settings.timeout = c.timeout;
      settings.heartbeat_timeout = c.heartbeat_timeout;
      settings.heartbeat_interval = std::min(settings.heartbeat_interval, c.heartbeat_timeout / 4);
      settings.link = c.link;
      link = comm::connect_peer_link(c.job_name, launch, settings, *c.logger);
    }
    return std::make_unique<GossipStrategy>(std::move(link), c.make_model, c.make_optimizer, o,
                                            c.loss, *c.logger);
  }

  std::unique_ptr<StrategySpec> clone() const override {
    return std::make_unique<GossipSpec>(*this);
  }

 private:
  GossipOptions options() const {
    GossipOptions o;
    o.mode = parse_gossip_mode(o_.mode);
    o.topology = gossip::parse_topology(o_.topology);
    o.consensus_every = o_.consensus_every;
    return o;
  }

  GossipJobOptions o_;
  KeyLines where_;
};

}  // namespace

std::unique_ptr<StrategySpec> make_gossip_spec() { return std::make_unique<GossipSpec>(); }

}  // namespace dtrain::strategy
