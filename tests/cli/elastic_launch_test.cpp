// The Launcher in elastic mode, with /bin/sh workers: a failed worker does
// not stop the others, is replaced while restarts remain (the replacement
// sees DTRAIN_RESTART_COUNT), and the job stops, naming every lost slot, once
// fewer than min_workers run. The elastic coordinator itself is tested in
// tests/comm/elastic_rendezvous_test.cpp, the whole job in
// tests/ft/elastic_mode_test.cpp.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cli/launcher.h"
#include "core/error.h"

namespace dtrain::cli {
namespace {

using namespace std::chrono_literals;

struct ElasticShJob {
  LaunchOptions options;
  std::ostringstream out;
  std::ostringstream err;
  std::string log;
  Logger logger{LogLevel::kDebug, [this](LogLevel level, std::string_view message) {
                  log += fmt::format("[{}] {}\n", to_string(level), message);
                }};
  std::vector<int> starting;          // slots, in order
  std::vector<WorkerExit> ended;      // in order
  std::vector<std::string> stopping;  // reasons

  ElasticShJob(const std::string& script, int workers, int min_workers, int max_restarts) {
    options.argv = {"/bin/sh", "-c", script};
    options.workers = workers;
    options.environment = {{"PATH", "/usr/bin:/bin"}};
    LaunchOptions::Elastic e;
    e.min_workers = min_workers;
    e.max_restarts = max_restarts;
    e.on_worker_starting = [this](int slot) { starting.push_back(slot); };
    e.on_worker_ended = [this](const WorkerExit& exit, int) { ended.push_back(exit); };
    e.on_stopping = [this](const std::string& reason) { stopping.push_back(reason); };
    options.elastic = std::move(e);
  }
  LaunchResult launch() { return Launcher(options, out, err, logger).run(Deadline::after(60s)); }
};

// Slot 1's first process kills itself; every other process exits 0.
constexpr const char* kSlot1DiesOnce =
    "if [ $DTRAIN_RANK = 1 ] && [ $DTRAIN_RESTART_COUNT = 0 ]; then kill -KILL $$; fi; "
    "echo slot $DTRAIN_RANK process $DTRAIN_RESTART_COUNT";

TEST(ElasticLaunch, AKilledWorkerIsReplacedAndTheJobSucceeds) {
  ElasticShJob run(kSlot1DiesOnce, 3, 1, 1);
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 0) << run.log;
  EXPECT_FALSE(result.first_failed_rank.has_value());
  ASSERT_EQ(result.workers.size(), 4u) << run.log;
  EXPECT_EQ(run.starting, (std::vector<int>{0, 1, 2, 1}));
  ASSERT_EQ(run.ended.size(), 4u);
  const auto killed =
      std::find_if(run.ended.begin(), run.ended.end(), [](const WorkerExit& e) { return !e.ok(); });
  ASSERT_NE(killed, run.ended.end());
  EXPECT_EQ(killed->rank, 1);
  EXPECT_EQ(killed->signal, SIGKILL);
  EXPECT_NE(run.log.find(fmt::format("worker slot 1 (pid {}) was killed by signal 9 (SIGKILL); "
                                     "continuing with",
                                     killed->pid)),
            std::string::npos)
      << run.log;
  EXPECT_NE(run.log.find("starting a new worker for slot 1 (restart 1 of 1)"), std::string::npos)
      << run.log;
  EXPECT_NE(run.out.str().find("[rank 1] slot 1 process 1"), std::string::npos) << run.out.str();
  EXPECT_TRUE(run.stopping.empty());
}

TEST(ElasticLaunch, FewerThanMinWorkersStopsTheJobNamingTheLostSlots) {
  ElasticShJob run("if [ $DTRAIN_RANK = 1 ]; then kill -KILL $$; fi; exec sleep 30", 3, 3, 0);
  run.options.stop_grace = 2000ms;
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 1);
  ASSERT_EQ(result.first_failed_rank, 1);
  EXPECT_NE(run.log.find("2 worker(s) left, fewer than min_workers = 3: stopping the job "
                         "(lost: slot 1 (pid "),
            std::string::npos)
      << run.log;
  ASSERT_EQ(run.stopping.size(), 1u);
  EXPECT_NE(run.stopping[0].find("too few workers after worker slot 1 failed"), std::string::npos);
  EXPECT_EQ(result.workers.size(), 3u);
}

TEST(ElasticLaunch, RejectsBadOptions) {
  ElasticShJob run("exit 0", 2, 3, 0);
  EXPECT_THROW(Launcher launcher(run.options, run.out, run.err, run.logger), UsageError);
  run.options.elastic->min_workers = 1;
  run.options.elastic->max_restarts = -1;
  EXPECT_THROW(Launcher launcher(run.options, run.out, run.err, run.logger), UsageError);
}

}  // namespace
}  // namespace dtrain::cli
