// ConvergenceGuard: watches the training loss of a run that reduces its
// communication (compression, local SGD) and decides when to rescue it
// (docs/compression.md, "Convergence guard"). No peer framework has one:
// a compressor that hurts convergence there fails silently.
//
// The rule, per update (the loss is the update's mean over every worker,
// the same on all of them, so every worker decides alike):
//  - a non-finite loss or gradient diverged;
//  - otherwise the loss joins a window of the last `window` updates; once
//    the window is full, its mean m is compared with the best full-window
//    mean b so far and the first one f (the run's starting loss):
//    m > b + margin * max(b, f) diverged. Measuring the margin against the
//    starting loss as well keeps the ordinary noise of a loss near zero
//    (0.05 -> 0.1 is +100%) from counting as a rise.
// A rescue goes one level weaker (CompressionSettings::weakened) and holds
// it for `hold_steps` updates; then the level steps back down one at a time,
// each held again, until the job's own setting. A level that diverged twice
// is not returned to: the level above it becomes the floor. The trainer restores the
// last snapshot (snapshot_due(): every `snapshot_every` healthy updates)
// and applies level() to the strategy.
//
// State for checkpoints: level, the step its hold ends, the best mean and
// the rescues so far, as one metadata string (encode / decode).
// Thread safety: a value; one thread. Errors: CheckpointError-free:
// decode() throws DataError on a malformed string.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <string>

#include "strategy/compression.h"
#include "train/job_config.h"

namespace dtrain::train {

class ConvergenceGuard {
 public:
  explicit ConvergenceGuard(GuardConfig config) : config_(config) {}

  // Update `step` (1-based, after it) had mean loss `loss` (NaN/inf: the
  // loss or the gradient was not finite). Returns true when the run
  // diverged: the caller restores its snapshot and calls rescued().
  bool diverged(double loss);
  // After a rescue at `step`: one level weaker, held for hold_steps.
  void rescued(int64_t step);
  // Before update `step + 1`: steps the level back down when its hold is
  // over. Returns whether the level changed.
  bool relax(int64_t step);
  // Whether a snapshot should be taken after healthy update `step`.
  bool snapshot_due(int64_t step) const { return step % config_.snapshot_every == 0; }

  int level() const { return level_; }
  int floor() const { return floor_; }
  int64_t rescues() const { return rescues_; }
  int64_t hold_until() const { return hold_until_; }

  std::string encode() const;
  void decode(const std::string& text);

 private:
  GuardConfig config_;
  std::deque<double> window_;
  double window_sum_ = 0.0;
  double best_ = -1.0;   // the best full-window mean; < 0 before the first
  double first_ = -1.0;  // the first full-window mean
  int level_ = 0;
  int floor_ = 0;  // relax() stops here: every level below diverged twice
  std::array<int, strategy::CompressionSettings::kDenseLevel + 1> failures_{};
  int64_t hold_until_ = 0;
  int64_t rescues_ = 0;
};

}  // namespace dtrain::train
