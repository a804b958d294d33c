#include "train/partitioned_epoch.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "data/sampler.h"

namespace dtrain::train {

PartitionedEpoch::PartitionedEpoch(std::vector<std::vector<int64_t>> parts, int64_t rank,
                                   uint64_t seed, int64_t epoch)
    : parts_(std::move(parts)), consumed_(parts_.size(), 0), rank_(rank) {
  if (rank < 0 || rank >= workers()) {
    throw UsageError(
        fmt::format("partitioned epoch: rank {} is outside the {} parts", rank, parts_.size()));
  }
  const std::vector<int64_t>& part = parts_[static_cast<size_t>(rank)];
  // A stream of its own per worker: the seed moved by a large odd constant
  // per rank, so that neighbouring seeds and ranks do not share streams.
  const uint64_t worker_seed = seed + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(rank + 1);
  const std::vector<int64_t> order =
      data::shuffled_order(static_cast<int64_t>(part.size()), worker_seed, epoch);
  mine_.reserve(part.size());
  for (int64_t position : order) mine_.push_back(part[static_cast<size_t>(position)]);
}

bool PartitionedEpoch::exhausted() const {
  for (size_t w = 0; w < parts_.size(); ++w) {
    if (consumed_[w] < static_cast<int64_t>(parts_[w].size())) return false;
  }
  return true;
}

std::vector<int64_t> PartitionedEpoch::take(std::span<const int64_t> rows) {
  if (static_cast<int64_t>(rows.size()) != workers()) {
    throw UsageError(fmt::format("partitioned epoch: a split of {} workers for {} parts",
                                 rows.size(), parts_.size()));
  }
  std::vector<int64_t> out;
  int64_t taken = 0;
  for (size_t w = 0; w < parts_.size(); ++w) {
    if (rows[w] < 0) {
      throw UsageError(fmt::format("partitioned epoch: {} rows for worker {}", rows[w], w));
    }
    const int64_t left = static_cast<int64_t>(parts_[w].size()) - consumed_[w];
    const int64_t n = std::min(rows[w], left);
    if (static_cast<int64_t>(w) == rank_) {
      const auto first = mine_.begin() + consumed_[w];
      out.assign(first, first + n);
    }
    consumed_[w] += n;
    taken += n;
  }
  if (taken == 0 && !exhausted()) {
    throw UsageError(
        "partitioned epoch: the split gives no rows to any worker that has samples left; "
        "raise distributed.min_share or train.batch_size");
  }
  return out;
}

void PartitionedEpoch::skip(std::span<const int64_t> consumed) {
  if (static_cast<int64_t>(consumed.size()) != workers()) {
    throw UsageError(fmt::format("partitioned epoch: positions of {} workers for {} parts",
                                 consumed.size(), parts_.size()));
  }
  for (size_t w = 0; w < parts_.size(); ++w) {
    consumed_[w] = std::clamp<int64_t>(consumed[w], 0, static_cast<int64_t>(parts_[w].size()));
  }
}

int64_t PartitionedEpoch::steps_at_equal_shares(const std::vector<std::vector<int64_t>>& parts,
                                                int64_t batch_rows) {
  const auto w = static_cast<int64_t>(parts.size());
  int64_t steps = 0;
  for (int64_t r = 0; r < w; ++r) {
    const int64_t share = batch_rows * (r + 1) / w - batch_rows * r / w;
    const auto size = static_cast<int64_t>(parts[static_cast<size_t>(r)].size());
    if (size == 0) continue;
    if (share <= 0) {
      throw UsageError(fmt::format(
          "a global batch of {} rows gives worker {} of {} no rows, but its part has {} samples: "
          "raise train.batch_size to at least the worker count",
          batch_rows, r, w, size));
    }
    steps = std::max(steps, (size + share - 1) / share);
  }
  return steps;
}

}  // namespace dtrain::train
