// A gossip job (`dtrain train --strategy gossip --workers 4`) loses a worker
// for real: a non-chief worker SIGKILLs itself mid-training (the test hook
// DTRAIN_TEST_KILL_AT_STEP=SLOT:STEP, cli/test_hooks.h; a gossip job's slot
// is the worker's rank), so the kill lands at the same step in every run.
// Its neighbours drop it from the mixing and say so, the chief's reports go
// on, the survivors leave on their own (the launcher need not release them),
// and the job ends with exit 0 within the test's deadline (a hang fails the
// test, it does not stall it); with --max-restarts 1 a replacement joins by
// copying a neighbour's model.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "ft_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace ft_test;
using namespace std::chrono_literals;

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// kJob (60 steps: 3 epochs of 20 on 1200 synthetic samples) as a gossip job
// of 4 workers on a ring: checkpoints at epoch ends only (a checkpoint
// fetches every worker's model), a report every 5 steps with the consensus
// distance every 5, and a 5 s deadline per exchange so that a dead
// neighbour costs at most that.
std::vector<std::string> gossip_args(const testing::TempDir& tmp, const std::string& mode,
                                     const std::string& max_restarts) {
  return {"train",
          tmp.file("job.toml"),
          "--output",
          tmp.file("out"),
          "--strategy",
          "gossip",
          "--workers",
          "4",
          "--max-restarts",
          max_restarts,
          "--no-resume",
          "--progress",
          "plain",
          "--set",
          "distributed.gossip.mode=\"" + mode + "\"",
          "--set",
          "distributed.gossip.topology=\"ring\"",
          "--set",
          "distributed.gossip.consensus_every=5",
          "--set",
          "distributed.timeout_ms=5000",
          "--set",
          "distributed.heartbeat_timeout_ms=2000",
          "--set",
          "train.log_every_steps=5",
          "--set",
          "train.checkpoint_every_steps=0"};
}

// The job with worker 2 killed after step 20 (of 60), every worker sleeping
// 100 ms after each step (DTRAIN_TEST_STEP_MS) so that the job outlasts a
// replacement's start; the whole run bounded by 120 s.
JobRun killed_run(const testing::TempDir& tmp, const std::string& mode,
                  const std::string& max_restarts) {
  write_text(tmp.file("job.toml"), kJob);
  testing::ChildProcess child =
      start_dtrain(gossip_args(tmp, mode, max_restarts),
                   {{"DTRAIN_TEST_KILL_AT_STEP", "2:20"}, {"DTRAIN_TEST_STEP_MS", "100"}});
  JobRun run;
  run.status = child.wait(Deadline::after(120s));
  run.output = child.output();
  return run;
}

// The global steps of metrics.jsonl's step events, and whether it holds the
// end event.
struct Reported {
  std::vector<int64_t> steps;
  bool ended = false;
  bool consensus = false;  // a step event carries consensus_distance
};

Reported reported(const std::string& metrics) {
  Reported r;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json e = nlohmann::json::parse(line, nullptr, false);
    if (e.is_discarded()) continue;
    if (e.value("event", "") == "step") {
      r.steps.push_back(e["step"].get<int64_t>());
      if (e.contains("consensus_distance")) r.consensus = true;
    }
    if (e.value("event", "") == "end") r.ended = true;
  }
  return r;
}

void expect_finished_after_the_kill(const JobRun& run, const testing::TempDir& tmp) {
  ASSERT_TRUE(run.status.has_value()) << "the job did not end within 120 s:\n" << run.output;
  EXPECT_TRUE(run.status->ok()) << run.status->describe() << "\n" << run.output;
  EXPECT_TRUE(has(run.output, "was killed by signal 9 (SIGKILL)")) << run.output;
  // Under the sanitizers a worker's report must not hide behind the kill.
  EXPECT_FALSE(has(run.output, "Sanitizer")) << run.output;
  EXPECT_FALSE(has(run.output, "runtime error:")) << run.output;
  EXPECT_FALSE(has(run.output, "exited with code")) << run.output;
  // The survivors leave on their own once the chief has the final model.
  EXPECT_FALSE(has(run.output, "still runs after the job finished training")) << run.output;
  EXPECT_TRUE(has(run.output, "done: 3 epochs, 60 steps")) << run.output;
  const Reported r = reported(tmp.file("out/metrics.jsonl"));
  EXPECT_TRUE(r.ended) << run.output;
  ASSERT_FALSE(r.steps.empty()) << run.output;
  EXPECT_EQ(r.steps.back(), 60) << "the chief's reports stopped at the kill";
  EXPECT_TRUE(r.consensus) << "no consensus_distance in the step events";
}

TEST(GossipFailure, AKilledWorkerIsDroppedByItsNeighboursAndTheJobFinishes) {
  testing::TempDir tmp;
  const JobRun run = killed_run(tmp, "sync", "0");
  expect_finished_after_the_kill(run, tmp);
  // Its ring neighbours 1 and 3 (the one line each, warnings reach the log).
  EXPECT_TRUE(has(run.output, "gossip worker 1: worker 2 dropped from the mixing at step"))
      << run.output;
  EXPECT_TRUE(has(run.output, "gossip worker 3: worker 2 dropped from the mixing at step"))
      << run.output;
}

TEST(GossipFailure, AsyncAveragingDropsAKilledPartnerAndTheJobFinishes) {
  testing::TempDir tmp;
  const JobRun run = killed_run(tmp, "async", "0");
  expect_finished_after_the_kill(run, tmp);
  // Whoever picked worker 2 as a partner after the kill said so; with a ring
  // both its neighbours pick it half of their steps.
  EXPECT_TRUE(has(run.output, ": worker 2 dropped from the averaging")) << run.output;
}

TEST(GossipFailure, AReplacementJoinsWithANeighboursModel) {
  testing::TempDir tmp;
  const JobRun run = killed_run(tmp, "sync", "1");
  expect_finished_after_the_kill(run, tmp);
  const std::string joined = "gossip: worker 2 joined at step ";
  const size_t at = run.output.find(joined);
  ASSERT_NE(at, std::string::npos) << run.output;
  const int64_t step = std::stoll(run.output.substr(at + joined.size()));
  // The step is the neighbour's count of finished steps. Worker 2 died after
  // its 20th step, which took its neighbours' 20th-step models: each had
  // finished 19 then, and may still be in its 20th (dropping worker 2 from
  // its mixing) when the replacement asks, however fast that start was.
  EXPECT_GE(step, 19) << run.output;
  EXPECT_LE(step, 60) << run.output;
}

}  // namespace
}  // namespace dtrain
