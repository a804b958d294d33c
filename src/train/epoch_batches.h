// EpochBatches: where one process's batches of one epoch come from, and which
// of their rows are its own.
//
// Shared global batches (the default): every process walks the same shuffled
// order of the training set (from the job's seed and the epoch) in global
// batches of B rows, and takes the rows [lo, hi) that Strategy::row_range()
// names. Partitions (job.data.partition): every worker takes its share of the
// step's rows from its own part (train/partitioned_epoch.h), all of them (lo
// 0, hi the batch's size); the epoch ends when every part is used up.
//
// A resumed epoch continues where it stopped: the first `done_batches` global
// batches are skipped, or, partitioned, every worker's position in its part
// is restored.
// Ownership: borrows the data set, loader and strategy, which outlive it.
// Thread safety: one thread. Errors: what the loader and the partitioner
// throw. Blocking: may wait for the loader's prefetch.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "strategy/strategy.h"
#include "train/partitioned_epoch.h"

namespace dtrain::train {

// One step's batch and this process's rows of it.
struct StepBatch {
  data::Batch batch;
  int64_t lo = 0;
  int64_t hi = 0;
  std::vector<int64_t> split;  // every process's rows of the global batch
};

class EpochBatches {
 public:
  // Shared global batches of `batch_size` rows from `loader`.
  EpochBatches(const data::TensorDataset& train, data::DataLoader& loader,
               const strategy::Strategy& strategy, uint64_t seed, int64_t epoch, int64_t batch_size,
               int64_t done_batches);
  // Batches from `parts` (one per worker); `consumed`: each worker's
  // position in its part at the checkpoint (empty: the epoch's start).
  EpochBatches(const data::TensorDataset& train, const std::vector<std::vector<int64_t>>& parts,
               const strategy::Strategy& strategy, uint64_t seed, int64_t epoch, int64_t batch_size,
               const std::vector<int64_t>& consumed);

  // The next step's batch; nullopt once the epoch is over.
  std::optional<StepBatch> next();
  // The batch next() returns next, without taking it: its rows split as the
  // strategy splits them now (next() splits them again, as the strategy
  // then says). Null at the epoch's end, and with partitions (their rows
  // depend on the split at the time they are taken). Loads the batch from
  // the loader (may wait for its prefetch); the pointer is valid until the
  // next call.
  const StepBatch* peek();
  // Partitioned: each worker's position in its part (for checkpoints);
  // empty otherwise.
  std::vector<int64_t> consumed() const;
  // Partitioned: every part is used up. Shared batches: false (the loader
  // says when the epoch ends).
  bool done() const { return parts_ && parts_->exhausted(); }
  // The split of the last batch handed out.
  const std::vector<int64_t>& last_split() const { return last_split_; }

 private:
  const data::TensorDataset& train_;
  data::DataLoader* loader_ = nullptr;  // shared batches
  const strategy::Strategy& strategy_;
  int64_t batch_size_;
  std::unique_ptr<PartitionedEpoch> parts_;  // partitions
  std::vector<int64_t> last_split_;
  std::optional<std::optional<data::Batch>> peeked_;  // a loaded batch (or the end) next() takes
  StepBatch peeked_step_;                             // peek()'s answer
};

}  // namespace dtrain::train
