// TraceWriter: a TraceSink (core/trace.h) that writes one process's events as
// a Chrome trace-event file in the "JSON Array Format", readable by
// chrome://tracing and https://ui.perfetto.dev:
//
//   [
//   {"name":"process_name","ph":"M","pid":0,"tid":0,"args":{"name":"rank 0"}},
//   {"name":"fc1","cat":"forward","ph":"X","ts":1765000000000000,"dur":41,"pid":0,"tid":1},
//   ...
//   ]
//
// One event object per line, each followed by ','. The closing ']' is written
// by close() but is optional for the viewers, so the file of a killed process
// still opens (its last line may be cut; obs/trace_file.h reads it anyway).
// complete() records unconditionally (a span begun in range ends after it);
// its callers test recording() when the span starts, as TraceSpan does.
// pid = the rank, tid = a small number per thread in order of its first event
// (1 = the first thread to record, usually the main one), each named by a
// thread_name metadata event. Metadata of dtrain's own (ignored by viewers):
// "dtrain_trace" {rank, first_step, last_step} and "clock_offset"
// {offset_us, rtt_us} (this clock minus rank 0's).
//
// Cost: an event is formatted into a stack buffer, then appended under one
// mutex to the pending text (amortized growth, no allocation per event); the
// pending text goes to the file in one write() at each set_step() and whenever
// it exceeds kFlushBytes.
//
// Ownership: owns the file descriptor. Thread safety: all members may be
// called from any thread. Errors: the constructor throws io::FileError when
// the file cannot be created; a failed write is remembered (later events are
// dropped) and thrown by close() as io::FileError naming the path. Blocking:
// a write of at most kFlushBytes plus one event.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/trace.h"

namespace dtrain::obs {

// The steps to record, inclusive: "N:M" in the job file (train.trace_steps).
struct TraceSteps {
  int64_t first = 1;
  int64_t last = 50;
};

// Parses "N:M" (1 <= N <= M); throws UsageError quoting `text` otherwise.
TraceSteps parse_trace_steps(std::string_view text);

// The file of `rank` for a trace path: `path` itself for a single process,
// else "-rank<r>" before the extension ("run.json" -> "run-rank1.json"). An
// empty path means "<output>/trace/rank-<r>.json".
std::string trace_path_for_rank(const std::string& path, const std::string& output, int64_t rank,
                                int64_t world_size);

class TraceWriter final : public TraceSink {
 public:
  static constexpr size_t kFlushBytes = size_t{1} << 20;

  // Creates (truncates) `path`, creating its directory, and writes the
  // header and metadata lines.
  TraceWriter(std::string path, int64_t rank, TraceSteps steps);
  ~TraceWriter() override;
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  bool recording() const override { return recording_.load(std::memory_order_relaxed); }
  void set_step(int64_t step) override;
  void name_thread(std::string_view name) override;
  void set_clock_offset(int64_t offset_us, int64_t rtt_us) override;
  void complete(std::string_view name, std::string_view category, int64_t start_us,
                int64_t duration_us, std::span<const TraceArg> args = {}) override;
  void async_begin(std::string_view name, std::string_view category, uint64_t id,
                   int64_t ts_us) override;
  void async_end(std::string_view name, std::string_view category, uint64_t id,
                 int64_t ts_us) override;
  void instant(std::string_view name, std::string_view category, int64_t ts_us,
               std::span<const TraceArg> args = {}) override;

  // Writes out what is pending (the file stays open, without ']').
  void flush();
  // Writes out what is pending and the closing ']'; throws io::FileError for
  // a write that failed. Later events are dropped. Idempotent.
  void close();

  const std::string& path() const { return path_; }
  // Events recorded and events dropped (outside the steps, or after a failed
  // write or close()).
  int64_t events() const;

 private:
  // Appends one formatted line; `lock` held.
  void append_locked(std::string_view line);
  void write_pending_locked();
  // The calling thread's small id; `lock` held. Registers it (and queues a
  // thread_name event) on first use.
  int tid_locked();
  // An async begin ('b') or end ('e') event.
  void async_event(char phase, std::string_view name, std::string_view category, uint64_t id,
                   int64_t ts_us);

  std::string path_;
  int64_t rank_;
  TraceSteps steps_;
  int fd_ = -1;
  std::atomic<bool> recording_{true};  // set-up (before step 1) is recorded
  mutable std::mutex mutex_;
  std::string pending_;
  std::vector<std::thread::id> threads_;  // index + 1 = tid
  std::optional<std::string> write_error_;
  bool closed_ = false;
  int64_t events_ = 0;
};

}  // namespace dtrain::obs
