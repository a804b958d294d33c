// PartitionedEpoch: the steps of one epoch when every worker trains on its
// own part of the training set ([data] partition, docs/partitioning.md)
// instead of on slices of a shared global batch.
//
// Every worker holds the whole partition (computed alike everywhere from the
// labels and the seed) and follows every worker's progress, so all agree on
// when the epoch ends without a message. Worker w visits its part in its own
// order, a shuffle of the part from (seed, w, epoch). At each step every
// worker w takes the next rows[w] samples of its part (its share of the
// global batch, the same split on every worker), fewer when its part has
// fewer left, none once it is exhausted; it then joins the step with 0 rows
// (weight 0 in the sample-weighted mean). The epoch ends when every worker
// has used its whole part: each sample of the training set is used exactly
// once per epoch, and the epoch has as many steps as the slowest-to-drain
// part needs.
//
// Resume: consumed() is each worker's position in its part; a checkpoint
// stores it and skip() restores it, so the rest of the epoch is the same.
//
// Thread safety: none (one training thread). Errors: UsageError for a rank
// outside the parts, a split or skip of the wrong length, negative rows.
// Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::train {

class PartitionedEpoch {
 public:
  // `parts`: every worker's sample indices (data::partition()); `rank`: this
  // worker, whose samples take() returns. The parts are copied.
  PartitionedEpoch(std::vector<std::vector<int64_t>> parts, int64_t rank, uint64_t seed,
                   int64_t epoch);

  int64_t workers() const { return static_cast<int64_t>(parts_.size()); }
  // Every worker has used its whole part.
  bool exhausted() const;
  // One step: worker w takes min(rows[w], left) samples. Returns this
  // worker's sample indices, in its visiting order. UsageError when the
  // step would take nothing although samples are left (the epoch could not
  // end).
  std::vector<int64_t> take(std::span<const int64_t> rows);
  // Samples each worker used so far in this epoch.
  const std::vector<int64_t>& consumed() const { return consumed_; }
  // Continues an epoch of which each worker had used consumed[w] samples
  // (capped at its part's size).
  void skip(std::span<const int64_t> consumed);

  // The steps an epoch takes when every worker gets its static share of
  // batch_rows (the equal split): the longest part's count. The schedule's
  // horizon; dynamic shares may end an epoch sooner or later.
  static int64_t steps_at_equal_shares(const std::vector<std::vector<int64_t>>& parts,
                                       int64_t batch_rows);

 private:
  std::vector<std::vector<int64_t>> parts_;
  std::vector<int64_t> consumed_;
  std::vector<int64_t> mine_;  // this worker's part in visiting order
  int64_t rank_;
};

}  // namespace dtrain::train
