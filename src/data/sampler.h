// Sampling: which samples a rank visits in which order, epoch by epoch.
//
// Shuffled order (training): the permutation of [0, N) for epoch e is a
// Fisher-Yates shuffle driven by Rng(seed + e), going from the last position
// down (position i swaps with Rng::below(i + 1)). Rng is bit-reproducible on
// every platform, so every worker computes the same permutation from the
// same seed with no communication.
//
// Sharding: the epoch's order (shuffled or sequential) is cut into
// world_size contiguous slices. With N = q * W + r, ranks 0 .. r-1 take
// q + 1 samples and the others q, so every sample is used exactly once per
// epoch across the ranks and shard sizes differ by at most one. Nothing is
// padded or dropped; a synchronous trainer that needs equal step counts on
// every rank sizes its epoch from max_shard_size() (a rank that runs out
// contributes an empty batch, weight 0 in the sample-weighted mean).
//
// Sequential order (evaluation): the identity [0, N), sharded the same way.
//
// Thread safety: ShardedSampler is immutable; any thread may call it.
// Errors: UsageError for a rank outside [0, world_size) or negative sizes.
#pragma once

#include <cstdint>
#include <vector>

namespace dtrain::data {

// The shuffled permutation of [0, n) for `epoch` (see above).
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch);
// [0, 1, ..., n-1].
std::vector<int64_t> sequential_order(int64_t n);

struct ShardRange {
  int64_t begin = 0;  // position in the epoch order
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
// The slice of positions rank `rank` of `world_size` takes out of `n`.
ShardRange shard_range(int64_t n, int64_t world_size, int64_t rank);

struct SamplerOptions {
  int64_t dataset_size = 0;
  int64_t world_size = 1;
  int64_t rank = 0;
  bool shuffle = true;  // false: sequential order (evaluation)
  uint64_t seed = 0;
};

class ShardedSampler {
 public:
  explicit ShardedSampler(SamplerOptions options);

  // This rank's sample indices for `epoch`, in visiting order.
  std::vector<int64_t> epoch_indices(int64_t epoch) const;
  int64_t shard_size() const { return range_.size(); }
  // The largest shard over all ranks (rank 0's).
  int64_t max_shard_size() const;
  const SamplerOptions& options() const { return options_; }

 private:
  SamplerOptions options_;
  ShardRange range_;
};

}  // namespace dtrain::data
