// Timelines through the dtrain executable: a 2-worker allreduce run and a ps
// run (1 server, 2 workers) traced and merged, and a worker SIGKILLed
// mid-run whose cut file `dtrain trace merge` still reads.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using nlohmann::json;
using testing::ChildProcess;
using testing::CliRun;
using testing::ExitStatus;
using testing::run_dtrain;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("trace-blobs")
                             .seed(7)
                             .synthetic(600, 10, 3)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .set("train.max_steps", "8")
                             .batch(48)
                             .set("train.log_every_steps", "1")
                             .toml();

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

// (pid, "cat/name") of every complete event, and the steps of "step" spans.
struct Seen {
  std::map<int64_t, std::set<std::string>> names;
  std::set<int64_t> steps;
  std::set<int64_t> offsets;  // pids with a clock_offset record
  int64_t offset_us = 0;      // rank 1's
  int64_t rtt_us = 0;
};

Seen seen(const json& merged) {
  Seen s;
  for (const json& e : merged) {
    const int64_t pid = e.value("pid", int64_t{-1});
    if (e.value("name", "") == "clock_offset") {
      s.offsets.insert(pid);
      if (pid == 1) {
        s.offset_us = e["args"]["offset_us"].get<int64_t>();
        s.rtt_us = e["args"]["rtt_us"].get<int64_t>();
      }
    }
    if (e.value("ph", "") != "X" && e.value("ph", "") != "b") continue;
    s.names[pid].insert(e.value("cat", "") + "/" + e.value("name", ""));
    if (e.value("name", "") == "step") s.steps.insert(e["args"]["step"].get<int64_t>());
  }
  return s;
}

TEST(TraceCli, TwoWorkerAllReduceRunMergesBothRanks) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                                 "--workers", "2", "--trace", "auto", "--trace-steps", "3:6"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  const std::string r0 = dir.file("out/trace/rank-0.json"), r1 = dir.file("out/trace/rank-1.json");
  const CliRun merge =
      run_dtrain({"trace", "merge", "-o", dir.file("merged.json"), r0, r1, "--stats"});
  ASSERT_TRUE(merge.status.ok()) << merge.output;
  EXPECT_NE(merge.output.find("of 2 ranks into"), std::string::npos) << merge.output;
  EXPECT_NE(merge.output.find("hidden"), std::string::npos) << merge.output;
  const Seen s = seen(read_json(dir.file("merged.json")));
  EXPECT_EQ(s.steps, (std::set<int64_t>{3, 4, 5, 6}));
  EXPECT_EQ(s.offsets, (std::set<int64_t>{0, 1}));  // rank 0: offset 0 to itself
  // One machine, one clock: Cristian's estimate is within half the round trip.
  EXPECT_GT(s.rtt_us, 0);
  EXPECT_LE(2 * std::abs(s.offset_us), s.rtt_us);
  for (const int64_t rank : {0, 1}) {
    SCOPED_TRACE(rank);
    const std::set<std::string>& n = s.names.at(rank);
    for (const std::string want :
         {"layer/linear 'fc1'", "layer/relu '1'", "step/forward", "step/backward",
          "autograd/linear", "allreduce/bucket", "comm/allreduce", "step/wait", "step/update",
          "data/batch", "setup/rendezvous"}) {
      EXPECT_TRUE(n.count(want)) << want << " missing; seen: " << json(n).dump();
    }
  }
  const CliRun stats = run_dtrain({"trace", "stats", dir.file("merged.json")});
  ASSERT_TRUE(stats.status.ok()) << stats.output;
  EXPECT_NE(stats.output.find("\n   1     4 "), std::string::npos) << stats.output;
}

TEST(TraceCli, BadTraceStepsAreAConfigError) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                                 "--trace", "auto", "--trace-steps", "5:2"});
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_NE(run.output.find("train.trace_steps"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("trace steps '5:2': expected N:M with 1 <= N <= M"), std::string::npos)
      << run.output;
}

TEST(TraceCli, PsRunRecordsPushAndPull) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run =
      run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--strategy", "ps",
                  "--workers", "2", "--servers", "1", "--trace", dir.file("t/run.json")});
  ASSERT_TRUE(run.status.ok()) << run.output;
  const CliRun merge = run_dtrain({"trace", "merge", "-o", dir.file("merged.json"),
                                   dir.file("t/run-rank0.json"), dir.file("t/run-rank1.json")});
  ASSERT_TRUE(merge.status.ok()) << merge.output;
  const Seen s = seen(read_json(dir.file("merged.json")));
  for (const int64_t rank : {0, 1}) {
    SCOPED_TRACE(rank);
    const std::set<std::string>& n = s.names.at(rank);
    for (const std::string want : {"ps/push", "ps/pull", "step/backward", "autograd/linear"}) {
      EXPECT_TRUE(n.count(want)) << want << " missing; seen: " << json(n).dump();
    }
  }
  EXPECT_EQ(s.steps.size(), 8u);
  // Both workers aligned to server 0's clock: no "no clock offset" note, and
  // on one machine the estimate is within half its round trip.
  EXPECT_EQ(merge.output.find("no clock offset"), std::string::npos) << merge.output;
  EXPECT_EQ(s.offsets, (std::set<int64_t>{0, 1}));
  EXPECT_GT(s.rtt_us, 0);
  EXPECT_LE(2 * std::abs(s.offset_us), s.rtt_us);
}

TEST(TraceCli, AWorkerKilledMidRunLeavesAFileMergeReads) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  ChildProcess job = ChildProcess::spawn(
      {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY, "train", dir.file("job.toml"),
       "--output", dir.file("out"), "--workers", "2", "--set", "train.epochs=100000", "--set",
       "train.max_steps=0", "--trace", "auto", "--trace-steps", "1:1000000"},
      {{"OPENBLAS_NUM_THREADS", "1"}});
  ASSERT_TRUE(testing::wait_for_output(job, "(global 30)")) << job.output();
  // The launcher's line "... rank 0 (pid A), 1 (pid B)".
  const std::string started = job.output();
  const size_t at = started.find(", 1 (pid ");
  ASSERT_NE(at, std::string::npos) << started;
  ASSERT_EQ(::kill(std::stoi(started.substr(at + 9)), SIGKILL), 0);
  const std::optional<ExitStatus> status = job.wait(Deadline::after(std::chrono::seconds(120)));
  ASSERT_TRUE(status.has_value()) << job.output();
  const CliRun merge =
      run_dtrain({"trace", "merge", "-o", dir.file("merged.json"),
                  dir.file("out/trace/rank-0.json"), dir.file("out/trace/rank-1.json")});
  ASSERT_TRUE(merge.status.ok()) << merge.output;
  EXPECT_TRUE(merge.output.find("rank-1.json: rank 1: not closed") != std::string::npos ||
              merge.output.find("rank-1.json: rank 1: the last line was cut") != std::string::npos)
      << merge.output;
  const Seen s = seen(read_json(dir.file("merged.json")));
  EXPECT_TRUE(s.names.at(1).count("step/update")) << merge.output;
  EXPECT_GE(s.steps.size(), 30u);
}

}  // namespace
}  // namespace dtrain
