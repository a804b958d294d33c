// RankMetricsWriter: every worker's own line for the live dashboard
// (src/obs/dashboard_server.h), appended to <output>/ranks/rank-<slot>.jsonl
// every log_every_steps steps:
//   {"time": unix seconds, "step", "samples_per_s", "rows", "bytes_per_step",
//    "group_rank"}
// "rows" are this worker's rows of the step's global batch (its entry of
// StepInfo::split; the batch size with one worker), "group_rank" its rank in
// the group that ran the step (it changes when an elastic group re-forms;
// the file keeps the launch slot's name). A replacement process of a slot
// appends to the same file.
//
// Ownership: `group_rank` is called on the trainer's thread at each written
// step; what it reads must outlive the writer. Thread safety: the trainer's
// thread only (a Callback). Errors: dtrain::Error naming the file when it
// cannot be created, opened or written (that stops training, like
// metrics.jsonl). Blocking: one small write and flush per logged step.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>

#include "train/callbacks.h"

namespace dtrain::train {

class RankMetricsWriter : public Callback {
 public:
  // Creates <output>/ranks/ if needed and opens rank-<slot>.jsonl for appending.
  // `batch_size`: the global batch, this worker's rows when it trains alone.
  RankMetricsWriter(const std::string& output, int64_t slot, int64_t log_every_steps,
                    int64_t batch_size, std::function<int64_t()> group_rank);
  void on_step_end(const StepInfo& info) override;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
  int64_t log_every_steps_;
  int64_t batch_size_;
  std::function<int64_t()> group_rank_;
};

}  // namespace dtrain::train
