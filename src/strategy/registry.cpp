#include "strategy/registry.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain::strategy {

// Each strategy's file defines its spec's factory.
std::unique_ptr<StrategySpec> make_local_spec();
std::unique_ptr<StrategySpec> make_mirrored_spec();
std::unique_ptr<StrategySpec> make_allreduce_spec();
std::unique_ptr<StrategySpec> make_ps_spec();
std::unique_ptr<StrategySpec> make_gossip_spec();

namespace {

struct Registration {
  const char* name;
  std::unique_ptr<StrategySpec> (*make)();
};

// The registry: one line per strategy.
// clang-format off
constexpr Registration kStrategies[] = {
    {"local", make_local_spec},
    {"mirrored", make_mirrored_spec},
    {"allreduce", make_allreduce_spec},
    {"ps", make_ps_spec},
    {"gossip", make_gossip_spec},
};
// clang-format on

}  // namespace

std::vector<std::string> strategy_names() {
  std::vector<std::string> names;
  for (const Registration& r : kStrategies) names.emplace_back(r.name);
  return names;
}

std::unique_ptr<StrategySpec> make_strategy_spec(const std::string& name, const KeyLines& where,
                                                 std::string_view key) {
  for (const Registration& r : kStrategies) {
    if (name == r.name) {
      auto spec = r.make();
      DTRAIN_CHECK(spec->name() == r.name, "strategy registered as '{}' calls itself '{}'", r.name,
                   spec->name());
      return spec;
    }
  }
  throw where.error(key,
                    fmt::format("'{}' is not one of: {}", name, fmt::join(strategy_names(), ", ")));
}

int64_t StrategySpec::workers(const JobFacts& job) const {
  return job.launched ? job.launched_world_size : job.workers;
}

bool StrategySpec::uses_own_wire(const JobFacts& job) const { return job.launched; }

ProcessRole StrategySpec::role(const JobFacts& /*job*/, const comm::LaunchInfo& launch) const {
  ProcessRole r;
  r.index = launch.rank;
  r.chief = launch.rank == 0;
  return r;
}

int StrategySpec::serve(const BuildContext& /*context*/) const {
  throw InternalError(fmt::format("strategy '{}' has no server processes", name()));
}

void refuse_several_processes(const JobFacts& job, std::string_view strategy) {
  if (job.launched) {
    throw job.where.error(
        "distributed.strategy",
        fmt::format("{} runs in one process; this one is one of {} processes ({}): a launched job "
                    "of several processes uses allreduce or ps",
                    strategy, job.launched_world_size, job.launched_by));
  }
}

void check_one_process_job(const JobFacts& job, std::string_view strategy,
                           std::vector<std::string>& warnings) {
  if (job.slowdown) {
    throw job.where.error("distributed.slowdown",
                          fmt::format("a slowdown applies to the worker processes of an "
                                      "allreduce or ps job, not to '{}'",
                                      strategy));
  }
  if (job.compression || job.local_sgd) {
    throw job.where.error(job.compression ? "compression.type" : "compression.local_steps",
                          fmt::format("'{}' trains in one process and sends no gradients to "
                                      "compress or models to average: use the allreduce or ps "
                                      "strategy with several workers",
                                      strategy));
  }
  if (job.dynamic_batch) {
    warnings.push_back(
        fmt::format("distributed.dynamic_batch has no effect with '{}': it "
                    "balances the worker processes of an allreduce or ps job",
                    strategy));
  }
}

void refuse_elastic(const JobFacts& job, std::string_view strategy) {
  if (job.elastic) {
    throw job.where.error("distributed.strategy",
                          fmt::format("elastic mode (train.elastic) does not support the {} "
                                      "strategy yet: it re-forms allreduce groups of any size "
                                      "over shares of a shared global batch",
                                      strategy));
  }
}

}  // namespace dtrain::strategy
