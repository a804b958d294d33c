// The cost of one timeline event (core/trace.h, obs/trace_writer.h), in
// nanoseconds: a TraceSpan with no sink (tracing off), with a sink outside
// its steps, and recorded (formatted, buffered, written out at every "step"
// of 25 events, as a traced training step of the MNIST MLP emits about 21
// per rank). The minimum over repetitions (the machine may be loaded).
// Usage: trace_event_bench [EVENTS] [REPS] [EVENTS_PER_STEP] [DIR]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/trace.h"
#include "obs/trace_writer.h"

namespace {

using Clock = std::chrono::steady_clock;

// Nanoseconds per span of `events` spans on `sink`, a step every 25.
double per_event_ns(dtrain::TraceSink* sink, int64_t events, int64_t per_step) {
  const std::string name = "linear 'fc1'";
  const auto start = Clock::now();
  for (int64_t i = 0; i < events; ++i) {
    if (sink != nullptr && i % per_step == 0) sink->set_step(1 + (i / per_step) % 2);
    dtrain::TraceSpan span(sink, name, "layer");
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
         static_cast<double>(events);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t events = argc > 1 ? std::atoll(argv[1]) : 2000000;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const int64_t per_step = argc > 3 ? std::atoll(argv[3]) : 25;
  const std::string dir = argc > 4 ? argv[4] : std::filesystem::temp_directory_path().string();
  const std::string path = dir + "/trace_event_bench.json";
  double off = 1e30, out_of_range = 1e30, recorded = 1e30;
  for (int r = 0; r < reps; ++r) {
    off = std::min(off, per_event_ns(nullptr, events, per_step));
    {
      // Steps 1 and 2 alternate; only step 3 is recorded: never.
      dtrain::obs::TraceWriter w(path, 0, {3, 3});
      out_of_range = std::min(out_of_range, per_event_ns(&w, events, per_step));
    }
    {
      dtrain::obs::TraceWriter w(path, 0, {1, 2});
      recorded = std::min(recorded, per_event_ns(&w, events, per_step));
    }
  }
  std::filesystem::remove(path);
  std::printf(
      "{\"events\": %lld, \"per_step\": %lld, \"off_ns\": %.1f, \"out_of_range_ns\": %.1f, "
      "\"recorded_ns\": %.1f}\n",
      static_cast<long long>(events), static_cast<long long>(per_step), off, out_of_range,
      recorded);
  return 0;
}
