// TraceWriter: strict JSON once closed, a readable prefix when cut anywhere,
// events bounded to the configured steps, one track per thread.
#include "obs/trace_writer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <latch>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "obs/trace_file.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"

namespace dtrain::obs {
namespace {

using nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The "X" events of `events` named `name`.
std::vector<json> named(const std::vector<json>& events, const std::string& name) {
  std::vector<json> out;
  for (const json& e : events) {
    if (e.value("ph", "") == "X" && e.value("name", "") == name) out.push_back(e);
  }
  return out;
}

// Steps 1..5 with steps 2:4 recorded: a set-up span, then per step a span
// with a "step" argument, an instant and an async pair; a second thread
// records one span per step on its own track.
void write_sample(TraceWriter& w) {
  { TraceSpan setup(&w, "rendezvous", "setup"); }
  w.name_thread("main");
  w.set_clock_offset(-250, 40);
  for (int64_t step = 1; step <= 5; ++step) {
    w.set_step(step);
    {
      TraceSpan span(&w, "step", "step");
      span.arg("step", step);
      w.instant("mark", "test", trace_now_us());
      if (w.recording()) w.async_begin("bucket", "allreduce", 7, trace_now_us());
      std::thread other([&] {
        w.name_thread("comm");
        TraceSpan s(&w, "allreduce \"quoted\"\n", "comm");
        s.arg("step", step);
      });
      other.join();
      w.async_end("bucket", "allreduce", 7, trace_now_us());
    }
  }
}

TEST(TraceWriter, ClosedFileIsStrictJsonWithTracksAndBoundedSteps) {
  testing::TempDir dir;
  const std::string path = dir.file("sub/rank-3.json");
  {
    TraceWriter w(path, 3, {2, 4});
    write_sample(w);
    w.close();
  }
  const json all = json::parse(read_text(path));  // strict: throws on any defect
  ASSERT_TRUE(all.is_array());
  std::vector<json> events(all.begin(), all.end());
  for (const json& e : events) EXPECT_EQ(e.value("pid", -1), 3) << e.dump();

  // Bounded: the steps 2..4 and the set-up, nothing of steps 1 and 5.
  const std::vector<json> steps = named(events, "step");
  ASSERT_EQ(steps.size(), 3u);
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i]["args"]["step"].get<int64_t>(), static_cast<int64_t>(i) + 2);
  }
  EXPECT_EQ(named(events, "rendezvous").size(), 1u);
  EXPECT_EQ(named(events, "allreduce \"quoted\"\n").size(), 3u);
  int instants = 0, begins = 0, ends = 0;
  for (const json& e : events) {
    instants += e.value("ph", "") == "i";
    begins += e.value("ph", "") == "b";
    ends += e.value("ph", "") == "e";
  }
  EXPECT_EQ(instants, 3);
  EXPECT_EQ(begins, 3);
  EXPECT_EQ(ends, 3);

  // Tracks: the main thread is tid 1 and named "main"; the other thread's
  // spans are on another track named "comm" (its id may be reused by the
  // next step's thread: then the same track).
  std::map<int64_t, std::string> thread_names;
  for (const json& e : events) {
    if (e.value("name", "") == "thread_name") {
      thread_names[e["tid"].get<int64_t>()] = e["args"]["name"].get<std::string>();
    }
  }
  EXPECT_EQ(thread_names[1], "main");
  for (const json& s : steps) EXPECT_EQ(s["tid"].get<int64_t>(), 1);
  for (const json& e : named(events, "allreduce \"quoted\"\n")) {
    EXPECT_NE(e["tid"].get<int64_t>(), 1);
    EXPECT_EQ(thread_names[e["tid"].get<int64_t>()], "comm");
  }

  const TraceFile file = read_trace_file(path);
  EXPECT_TRUE(file.closed);
  EXPECT_FALSE(file.truncated);
  EXPECT_EQ(file.rank, 3);
  EXPECT_EQ(file.clock_offset_us, -250);
  EXPECT_EQ(file.clock_rtt_us, 40);
  EXPECT_EQ(file.events.size(), events.size());
}

// Every prefix of a file (closed or not) reads as a prefix of its events;
// only the empty file is an error.
TEST(TraceWriter, EveryTruncationReadsAsAPrefix) {
  testing::TempDir dir;
  for (const bool closed : {false, true}) {
    const std::string path = dir.file(closed ? "closed.json" : "open.json");
    TraceWriter w(path, 1, {1, 10});
    write_sample(w);
    if (closed) w.close();
    if (!closed) w.flush();
    const std::string text = read_text(path);
    const TraceFile full = parse_trace(text, path);
    EXPECT_EQ(full.closed, closed);
    EXPECT_FALSE(full.truncated);
    size_t previous = 0;
    for (size_t n = 1; n <= text.size(); ++n) {
      SCOPED_TRACE(::testing::Message() << (closed ? "closed" : "open") << " cut at " << n);
      const TraceFile cut = parse_trace(text.substr(0, n), path);
      ASSERT_LE(cut.events.size(), full.events.size());
      ASSERT_GE(cut.events.size(), previous);
      previous = cut.events.size();
      for (size_t i = 0; i < cut.events.size(); ++i) ASSERT_EQ(cut.events[i], full.events[i]);
      // A cut inside a line drops that line and says so; a cut after a
      // line's newline loses nothing.
      const bool at_line_end = text[n - 1] == '\n';
      // (The closed file's last event has no ',': cut before the ']', it
      // reads as cut.)
      if (at_line_end && n < text.size() && !(closed && n + 2 == text.size())) {
        EXPECT_FALSE(cut.truncated);
      }
    }
    EXPECT_EQ(previous, full.events.size());
    testing::expect_error<DataError>([&] { parse_trace("", path); },
                                     "trace file " + path + ": empty (no '[' line): not a trace");
  }
}

TEST(TraceWriter, DamageBeforeTheLastLineIsAnError) {
  testing::TempDir dir;
  const std::string path = dir.file("t.json");
  {
    TraceWriter w(path, 0, {1, 10});
    write_sample(w);
  }
  const std::string text = read_text(path);
  // Line 6 (1-based): its opening brace flipped.
  size_t at = 0;
  for (int line = 1; line < 6; ++line) at = text.find('\n', at) + 1;
  std::string flipped = text;
  flipped[at] = static_cast<char>(flipped[at] ^ 0x20);  // '{' -> '['
  const std::string line6 = text.substr(at, text.find('\n', at) - at - 1);
  testing::expect_error<DataError>([&] { parse_trace(flipped, path); },
                                   "trace file " + path + ": line 6: not a JSON event object: '" +
                                       std::string("[") + line6.substr(1, 59) + "'");
  // Line 6 without its comma.
  std::string no_comma = text;
  no_comma.erase(text.find('\n', at) - 1, 1);
  testing::expect_error<DataError>([&] { parse_trace(no_comma, path); },
                                   "trace file " + path + ": line 6: no ',' after the event");
  testing::expect_error<DataError>(
      [&] { parse_trace("{\"a\":1},\n", path); },
      "trace file " + path +
          ": line 1: expected '[' (a Chrome trace in JSON array format, one event per line), got "
          "'{\"a\":1},'");
  testing::expect_error<DataError>(
      [&] { parse_trace(text + "{},\n", path); },
      "trace file " + path + ": line " +
          std::to_string(std::count(text.begin(), text.end(), '\n') + 1) +
          ": text after the closing ']'");
}

TEST(TraceWriter, ThreadsAliveTogetherGetTheirOwnTracks) {
  testing::TempDir dir;
  const std::string path = dir.file("threads.json");
  {
    TraceWriter w(path, 0, {1, 1});
    w.set_step(1);
    std::latch all_started(4);
    std::vector<std::jthread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        all_started.arrive_and_wait();  // all four alive: four distinct ids
        w.name_thread("worker " + std::to_string(t));
        w.complete("work", "test", t, 1);
      });
    }
  }
  const json all = json::parse(read_text(path));
  std::map<int64_t, std::string> names;
  std::map<int64_t, int64_t> tid_of_ts;
  for (const json& e : all) {
    if (e.value("name", "") == "thread_name") names[e["tid"]] = e["args"]["name"];
    if (e.value("name", "") == "work") tid_of_ts[e["ts"]] = e["tid"];
  }
  ASSERT_EQ(tid_of_ts.size(), 4u);
  std::set<int64_t> tids;
  for (const auto& [ts, tid] : tid_of_ts) {
    tids.insert(tid);
    EXPECT_EQ(names[tid], "worker " + std::to_string(ts));
  }
  EXPECT_EQ(tids, (std::set<int64_t>{1, 2, 3, 4}));
}

TEST(TraceWriter, WritesOutWhenTheBufferFills) {
  testing::TempDir dir;
  const std::string path = dir.file("big.json");
  TraceWriter w(path, 0, {1, 1});
  w.set_step(1);
  const std::string header_only = read_text(path);
  const std::string name(100, 'n');
  size_t written = 0;
  for (int i = 0; std::filesystem::file_size(path) == header_only.size() && i < 100000; ++i) {
    w.complete(name, "test", i, 1);
    ++written;
  }
  EXPECT_GT(std::filesystem::file_size(path), TraceWriter::kFlushBytes);
  EXPECT_LT(written * 100, 2 * TraceWriter::kFlushBytes);
  EXPECT_EQ(w.events(), static_cast<int64_t>(written));
}

TEST(TraceWriter, StepsAndPaths) {
  EXPECT_EQ(parse_trace_steps("3:7").first, 3);
  EXPECT_EQ(parse_trace_steps("3:7").last, 7);
  EXPECT_EQ(parse_trace_steps("5:5").last, 5);
  for (const std::string bad : {"", "3", "0:5", "7:3", "a:b", "1:2:3", "1:", " 1:2"}) {
    testing::expect_usage_error([&] { parse_trace_steps(bad); },
                                "trace steps '" + bad +
                                    "': expected N:M with 1 <= N <= M (the updates to record, "
                                    "e.g. \"1:50\")");
  }
  EXPECT_EQ(trace_path_for_rank("", "out", 2, 4), "out/trace/rank-2.json");
  EXPECT_EQ(trace_path_for_rank("t/run.json", "out", 1, 2), "t/run-rank1.json");
  EXPECT_EQ(trace_path_for_rank("t/run.json", "out", 0, 1), "t/run.json");
  EXPECT_EQ(trace_path_for_rank("run", "out", 3, 4), "run-rank3");
}

TEST(TraceWriter, UnwritablePathThrowsFileError) {
  testing::TempDir dir;
  std::ofstream(dir.file("file")) << "x";
  EXPECT_THROW(TraceWriter(dir.file("file/trace.json"), 0, {}), Error);
}

}  // namespace
}  // namespace dtrain::obs
