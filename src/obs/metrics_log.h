// MetricsLog: a training run's metrics as read back from its
// `<run>/metrics.jsonl` (train/callbacks.h, JsonLinesWriter): one JSON object
// a line, {"event": "begin" | "step" | "epoch" | "end" | "guard" | "auc", ...,
// "time": unix seconds}. The reader keeps what plots need: the step reports
// (training loss and accuracy against step and wall time) and the epoch
// reports (test loss and accuracy).
//
// Tolerated: a torn last line (no final newline and not valid JSON: the run
// was killed while writing, or is still running), a torn line that a resumed
// run's "begin" was appended to (the line is the fragment followed by
// {"event":"begin",...}: the fragment is skipped), blank lines, events this
// reader does not know, and missing optional fields ("lr", "samples_per_s",
// "bytes_per_step", "compression_ratio", "time"; a missing "time" leaves the
// point out of the wall-time panels). A JSON null in a number field (what
// nlohmann writes for a NaN or infinite loss) reads as NaN. Any other
// malformed line (not JSON, not an object, no "event", a required field
// missing or of the wrong type) throws DataError naming the file and the
// 1-based line number.
//
// Resumed runs: a run resumed from a checkpoint appends a second "begin" and
// reports again the steps (and epochs) after the checkpoint it went back to.
// The reader keeps the points in file order, and when a report's step is not
// above the last kept one it drops the kept points at or beyond that step
// first: the later (resumed) record wins, so steps strictly increase and the
// series shows what the final model's history was. Epoch reports are handled
// the same way by epoch number. Wall time stays the file's: the time the run
// was down shows as a gap.
//
// Thread safety: pure functions on values. Blocking: read_metrics_log reads
// the file (bounded by io::kMaxDataFileBytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "io/file_system.h"

namespace dtrain::obs {

struct StepPoint {
  int64_t step = 0;
  int64_t epoch = 0;
  double lr = 0.0;
  double loss = 0.0;      // NaN when the run logged a non-finite loss
  double accuracy = 0.0;  // a fraction in [0, 1]
  double samples_per_s = 0.0;
  double bytes_per_step = 0.0;     // 0: not reported
  double compression_ratio = 0.0;  // 0: not reported
  double time = 0.0;               // unix seconds; NaN when the line has none
};

struct EpochPoint {
  int64_t epoch = 0;
  int64_t step = 0;
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  double test_loss = 0.0;
  double test_accuracy = 0.0;
  double samples_per_s = 0.0;
  double seconds = 0.0;
  double time = 0.0;  // unix seconds; NaN when the line has none
};

struct MetricsLog {
  std::string path;
  std::vector<StepPoint> steps;    // steps strictly increasing
  std::vector<EpochPoint> epochs;  // epochs strictly increasing
  // The first event's "time" (NaN when no event has one): wall time in plots
  // is measured from here.
  double start_time = 0.0;
  int64_t begins = 0;           // "begin" events: 2 and more for a resumed run
  int64_t replaced_points = 0;  // points dropped because a resumed run reported them again
  bool torn_last_line = false;  // an incomplete last line was skipped
  // Torn lines a resumed run's "begin" was appended to (skipped, the "begin" kept).
  int64_t torn_before_resume = 0;
};

// Parses the text of a metrics file; `path` only names it in errors.
MetricsLog parse_metrics_log(std::string_view text, const std::string& path);

// Reads and parses the file `path` (DataError when it cannot be read).
MetricsLog read_metrics_log(io::FileSystem& fs, const std::string& path);

// The metrics file of the run folder `run_dir`: "<run_dir>/metrics.jsonl".
std::string metrics_path(const std::string& run_dir);

}  // namespace dtrain::obs
