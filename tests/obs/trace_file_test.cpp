// Merging ranks' traces onto rank 0's clock, and the statistics of a trace
// with a known overlap of communication and backward.
#include "obs/trace_file.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "testing/expect_error.h"

namespace dtrain::obs {
namespace {

using nlohmann::json;

std::string x_event(const std::string& name, const std::string& cat, int64_t ts, int64_t dur,
                    int64_t pid, int64_t tid = 1) {
  return json{{"name", name}, {"cat", cat}, {"ph", "X"}, {"ts", ts},
              {"dur", dur},   {"pid", pid}, {"tid", tid}}
      .dump();
}

std::string header(int64_t rank) {
  return "[\n" +
         json{{"name", "dtrain_trace"},
              {"ph", "M"},
              {"pid", rank},
              {"tid", 0},
              {"args", {{"rank", rank}, {"first_step", 1}, {"last_step", 9}}}}
             .dump() +
         ",\n";
}

std::string offset(int64_t rank, int64_t offset_us) {
  return json{{"name", "clock_offset"},
              {"ph", "M"},
              {"pid", rank},
              {"tid", 0},
              {"args", {{"offset_us", offset_us}, {"rtt_us", 30}}}}
             .dump() +
         ",\n";
}

TEST(TraceMerge, ShiftsEachRankByItsOffsetAndKeepsRanksAsPids) {
  const std::string rank0 = header(0) + x_event("step", "step", 5000, 100, 0) + ",\n]\n";
  // Rank 1's clock runs 1000 us ahead of rank 0's: its 6000 is rank 0's 5000.
  // Its last line was cut (a killed process).
  const std::string rank1 = header(1) + offset(1, 1000) + x_event("step", "step", 6000, 80, 1) +
                            ",\n" + x_event("backward", "step", 6100, 10, 1).substr(0, 20);
  const TraceFile a = parse_trace(rank0, "rank-0.json");
  const TraceFile b = parse_trace(rank1, "rank-1.json");
  EXPECT_TRUE(b.truncated);
  const MergeResult merged = merge_traces({a, b});
  const json all = json::parse(merged.json);
  std::map<int64_t, int64_t> step_ts;
  for (const json& e : all) {
    if (e.value("name", "") == "step") step_ts[e["pid"].get<int64_t>()] = e["ts"].get<int64_t>();
  }
  ASSERT_EQ(step_ts.size(), 2u);
  EXPECT_EQ(step_ts[0], 5000);
  EXPECT_EQ(step_ts[1], 5000);
  ASSERT_EQ(merged.notes.size(), 1u);
  EXPECT_EQ(merged.notes[0],
            "rank-1.json: rank 1: the last line was cut (the process was killed?); it was dropped");

  // A rank without an offset is merged unshifted, with a note.
  const TraceFile c = parse_trace(header(2) + x_event("step", "step", 7000, 1, 2) + ",\n", "r2");
  const MergeResult m2 = merge_traces({a, c});
  EXPECT_NE(m2.json.find("\"ts\":7000"), std::string::npos);
  ASSERT_EQ(m2.notes.size(), 2u);
  EXPECT_EQ(m2.notes[0], "r2: rank 2: not closed (the process was killed?); read to its end");
  EXPECT_EQ(m2.notes[1], "r2: rank 2: no clock offset recorded; its times are not shifted");

  testing::expect_error<DataError>(
      [&] {
        merge_traces({a, a});
      },
      "trace merge: rank-0.json holds rank 0, as an earlier file does");
}

TEST(TraceStats, SumsAndHiddenShareOnAHandMadeTrace) {
  // Rank 0: backward passes [0, 100) and [200, 300); collectives on the
  // communication thread [50, 150) (half inside backward) and [250, 260)
  // (all inside): 110 us of reduce, 60 hidden; the set-up broadcast and a
  // barrier are not reduce time. Rank 1: ps push and pull.
  std::string text = header(0);
  for (const std::string& e :
       {x_event("step", "step", 0, 180, 0), x_event("backward", "step", 0, 100, 0),
        x_event("allreduce", "comm", 50, 100, 0, 2), x_event("wait", "step", 100, 50, 0),
        x_event("update", "step", 150, 5, 0), x_event("step", "step", 200, 70, 0),
        x_event("backward", "step", 200, 100, 0), x_event("allreduce", "comm", 250, 10, 0, 2),
        x_event("linear", "autograd", 210, 20, 0), x_event("checkpoint", "io", 400, 30, 0, 3),
        x_event("batch", "data", 190, 7, 0), x_event("evaluate", "eval", 500, 40, 0),
        x_event("push", "ps", 0, 12, 1), x_event("pull", "ps", 20, 8, 1),
        x_event("push", "ps", 40, 13, 1), x_event("broadcast", "comm", 600, 50, 0, 2),
        x_event("barrier", "comm", 700, 5, 0, 2)}) {
    text += e + ",\n";
  }
  const std::vector<RankTraceStats> stats = trace_stats(parse_trace(text, "t").events);
  ASSERT_EQ(stats.size(), 2u);
  const RankTraceStats& r0 = stats[0];
  EXPECT_EQ(r0.rank, 0);
  EXPECT_EQ(r0.steps, 2);
  EXPECT_EQ(r0.step_us, 250);
  EXPECT_EQ(r0.backward_us, 200);
  EXPECT_EQ(r0.reduce_us, 110);
  EXPECT_EQ(r0.reduce_hidden_us, 60);
  EXPECT_DOUBLE_EQ(r0.hidden_share(), 60.0 / 110.0);
  EXPECT_EQ(r0.wait_us, 50);
  EXPECT_EQ(r0.update_us, 5);
  EXPECT_EQ(r0.checkpoint_us, 30);
  EXPECT_EQ(r0.data_wait_us, 7);
  EXPECT_EQ(r0.eval_us, 40);
  const RankTraceStats& r1 = stats[1];
  EXPECT_EQ(r1.push_us, 25);
  EXPECT_EQ(r1.pull_us, 8);
  EXPECT_EQ(r1.reduce_us, 0);
  EXPECT_DOUBLE_EQ(r1.hidden_share(), 0.0);
  const std::string table = format_trace_stats(stats);
  EXPECT_NE(table.find("   0     2 "), std::string::npos) << table;
  EXPECT_NE(table.find("   55% "), std::string::npos) << table;
}

}  // namespace
}  // namespace dtrain::obs
