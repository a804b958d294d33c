// Reading TraceWriter's files back (obs/trace_writer.h), merging the ranks'
// files into one timeline on rank 0's clock, and the statistics of a trace.
//
// read_trace_file() is tolerant where a killed process leaves its file: the
// closing ']' may be missing and the LAST line may be cut anywhere (it is
// then dropped and `truncated` says so). Anything else that is not one JSON
// object per line is an error: DataError naming the file and the line.
//
// merge_traces() shifts each file's timestamps by minus its clock_offset
// (rank r's clock minus rank 0's), so that all ranks share rank 0's clock;
// a file without a clock_offset record (rank 0, or a rank killed before the
// alignment) is not shifted. Ranks stay the pids. The output is strict JSON
// (an array, one event per line).
//
// Thread safety: plain functions on values. Blocking: file I/O only.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dtrain::obs {

struct TraceFile {
  std::string path;
  int64_t rank = -1;  // from the dtrain_trace record (else the first event's pid; -1: none)
  std::optional<int64_t> clock_offset_us;  // this rank's clock minus rank 0's
  std::optional<int64_t> clock_rtt_us;
  bool closed = false;     // the closing ']' was present
  bool truncated = false;  // the last line was cut and dropped
  std::vector<nlohmann::json> events;
};

// Reads `text` (the content of `path`, which only names it in errors).
TraceFile parse_trace(const std::string& text, const std::string& path);
// Reads the file; io::FileError when it cannot be read.
TraceFile read_trace_file(const std::string& path);

// One notice per file worth telling (a cut last line, no clock offset).
struct MergeResult {
  std::string json;
  std::vector<std::string> notes;
};
// DataError when two files hold the same rank.
MergeResult merge_traces(const std::vector<TraceFile>& files);

// Per rank, microseconds summed over the trace (see docs/observability.md#timeline).
struct RankTraceStats {
  int64_t rank = 0;
  int64_t steps = 0;        // "step" spans
  int64_t step_us = 0;      // their total
  int64_t forward_us = 0;   // "forward" passes
  int64_t backward_us = 0;  // "backward" passes
  // Reducing collectives as the communicator's thread ran them (category
  // "comm", not the broadcasts and barriers of set-up and re-formation),
  // and how much of that time lies inside a backward pass.
  int64_t reduce_us = 0;
  int64_t reduce_hidden_us = 0;
  int64_t wait_us = 0;    // step(): waiting for the last bucket before the update
  int64_t update_us = 0;  // optimizer updates
  int64_t push_us = 0;    // ps push (all shards of an update)
  int64_t pull_us = 0;    // ps pull
  int64_t checkpoint_us = 0;
  int64_t data_wait_us = 0;
  int64_t eval_us = 0;
  double hidden_share() const {
    return reduce_us > 0 ? static_cast<double>(reduce_hidden_us) / static_cast<double>(reduce_us)
                         : 0.0;
  }
};

// Statistics of the ranks in `events` (a file's or a merge's), by rank.
std::vector<RankTraceStats> trace_stats(const std::vector<nlohmann::json>& events);
// A table of them, one line per rank, in milliseconds.
std::string format_trace_stats(const std::vector<RankTraceStats>& stats);

}  // namespace dtrain::obs
