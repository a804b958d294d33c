// The strategy registry: names, specs, and the checks each spec makes of a
// job before anything runs.
#include "strategy/registry.h"

#include <gtest/gtest.h>

#include <map>

#include "core/config_table.h"
#include "testing/expect_error.h"

namespace dtrain::strategy {
namespace {

// A ConfigTable over a map, for reading options without a file.
class MapTable final : public ConfigTable {
 public:
  explicit MapTable(std::map<std::string, std::string> values)
      : values_(std::move(values)), lines_("job.toml", "distributed.x", 0) {}
  bool read(std::string_view key, bool& out) override {
    return get(key, [&](const std::string& v) { out = v == "true"; });
  }
  bool read(std::string_view key, int64_t& out) override {
    return get(key, [&](const std::string& v) { out = std::stoll(v); });
  }
  bool read(std::string_view key, double& out) override {
    return get(key, [&](const std::string& v) { out = std::stod(v); });
  }
  bool read(std::string_view key, std::string& out) override {
    return get(key, [&](const std::string& v) { out = v; });
  }
  bool read(std::string_view key, std::vector<std::string>& out) override {
    return get(key, [&](const std::string& v) { out = {v}; });
  }
  const KeyLines& lines() const override { return lines_; }

 private:
  template <typename F>
  bool get(std::string_view key, F&& set) {
    const auto it = values_.find(std::string(key));
    if (it == values_.end()) return false;
    set(it->second);
    lines_.add(key, 7);
    return true;
  }
  std::map<std::string, std::string> values_;
  KeyLines lines_;
};

JobFacts facts(int64_t workers) {
  JobFacts f;
  f.workers = workers;
  f.where = KeyLines("job.toml", "", 0);
  return f;
}

TEST(StrategyRegistry, EveryRegisteredNameMakesItsSpec) {
  const std::vector<std::string> names = strategy_names();
  EXPECT_EQ(names, (std::vector<std::string>{"local", "mirrored", "allreduce", "ps", "gossip"}));
  for (const std::string& name : names) {
    const auto spec = make_strategy_spec(name, KeyLines(), "strategy");
    EXPECT_EQ(spec->name(), name);
    EXPECT_FALSE(spec->summary().empty());
    EXPECT_EQ(spec->clone()->name(), name);
  }
  dtrain::testing::expect_error<ConfigError>(
      [] { make_strategy_spec("swarm", KeyLines("job.toml", "distributed", 3), "strategy"); },
      "job.toml:3: 'distributed.strategy': 'swarm' is not one of: local, mirrored, allreduce, ps, "
      "gossip");
}

TEST(StrategyRegistry, PlansSayWhichProcessesAJobRuns) {
  std::vector<std::string> warnings;
  const auto local = make_strategy_spec("local", KeyLines(), "strategy");
  EXPECT_FALSE(local->multi_process(facts(1)));
  EXPECT_EQ(local->plan(facts(1)).processes, 1);

  const auto allreduce = make_strategy_spec("allreduce", KeyLines(), "strategy");
  EXPECT_FALSE(allreduce->multi_process(facts(1)));
  EXPECT_TRUE(allreduce->multi_process(facts(3)));
  EXPECT_EQ(allreduce->plan(facts(3)).processes, 3);
  EXPECT_FALSE(allreduce->plan(facts(3)).replace_failed);

  auto ps = make_strategy_spec("ps", KeyLines(), "strategy");
  MapTable table(std::map<std::string, std::string>{{"servers", "2"}});
  ps->read_options(table);
  const ProcessPlan plan = ps->plan(facts(3));
  EXPECT_EQ(plan.processes, 5);
  EXPECT_EQ(plan.servers, 2);
  EXPECT_TRUE(plan.replace_failed);
  EXPECT_EQ(plan.essential_slots, 3);
  EXPECT_EQ(plan.slot_name(1), "ps server 1");
  EXPECT_EQ(plan.slot_name(2), "worker 0");
  comm::LaunchInfo launch;
  launch.world_size = 5;
  launch.rank = 2;
  JobFacts launched = facts(1);
  launched.launched = true;
  launched.launched_world_size = 5;
  EXPECT_EQ(ps->workers(launched), 3);  // the world less the servers
  const ProcessRole chief = ps->role(launched, launch);
  EXPECT_FALSE(chief.server);
  EXPECT_TRUE(chief.chief);
  EXPECT_EQ(chief.name, "worker 0");
  launch.rank = 1;
  EXPECT_TRUE(ps->role(launched, launch).server);
}

TEST(StrategyRegistry, ThePsPlanCountsTheBackupsThatTakeOverWhereTheStartedProcessesWould) {
  // The launcher's plan applies build()'s rule, takeover.value_or(private
  // ipc), to the links its processes will have.
  struct Case {
    std::map<std::string, std::string> options;
    bool private_ipc;
    int takeover_replicas;
  };
  const std::vector<Case> cases = {
      {{{"servers", "2"}, {"replicas", "1"}}, true, 1},
      {{{"servers", "2"}, {"replicas", "1"}}, false, 0},  // across hosts: off unless asked
      {{{"servers", "2"}, {"replicas", "1"}, {"takeover", "true"}}, false, 1},
      {{{"servers", "2"}, {"replicas", "1"}, {"takeover", "false"}}, true, 0},
      {{{"servers", "3"}, {"replicas", "2"}}, true, 2},
      {{{"servers", "2"}}, true, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.options) +
                 (c.private_ipc ? " private" : " not private"));
    auto ps = make_strategy_spec("ps", KeyLines(), "strategy");
    MapTable table(c.options);
    ps->read_options(table);
    JobFacts f = facts(2);
    f.launcher_private_ipc = c.private_ipc;
    EXPECT_EQ(ps->plan(f).takeover_replicas, c.takeover_replicas);
  }
}

TEST(StrategyRegistry, SpecsCheckTheJobWithTheKeysLine) {
  std::vector<std::string> warnings;
  const auto local = make_strategy_spec("local", KeyLines(), "strategy");
  dtrain::testing::expect_error<ConfigError>(
      [&] { local->validate(facts(2), warnings); },
      "job.toml: 'distributed.workers': strategy 'local' runs one worker, not 2");
  JobFacts dynamic = facts(1);
  dynamic.dynamic_batch = true;
  local->validate(dynamic, warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("distributed.dynamic_batch has no effect with 'local'"),
            std::string::npos);

  auto ps = make_strategy_spec("ps", KeyLines(), "strategy");
  MapTable table(std::map<std::string, std::string>{{"backup_workers", "2"}});
  ps->read_options(table);
  dtrain::testing::expect_error<ConfigError>(
      [&] { ps->validate(facts(2), warnings); },
      "job.toml:7: 'distributed.x.backup_workers': 2 backup workers with 2 workers: must be in "
      "[0, 2)");
  JobFacts elastic = facts(2);
  elastic.elastic = true;
  EXPECT_THROW(ps->validate(elastic, warnings), ConfigError);
  auto allreduce = make_strategy_spec("allreduce", KeyLines(), "strategy");
  elastic.partitioned = true;
  dtrain::testing::expect_error<ConfigError>(
      [&] { allreduce->validate(elastic, warnings); },
      "job.toml: 'data.partition': elastic mode (train.elastic) does not support partitions (one "
      "per worker) yet: it re-forms allreduce groups of any size over shares of a shared global "
      "batch");
  MapTable bad(std::map<std::string, std::string>{{"accumulation_steps", "0"}});
  EXPECT_THROW(allreduce->read_options(bad), ConfigError);
}

}  // namespace
}  // namespace dtrain::strategy
