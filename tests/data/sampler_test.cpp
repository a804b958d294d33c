#include "data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::data {
namespace {

TEST(Sampler, ShardsCoverEverySampleExactlyOncePerEpoch) {
  for (const int64_t n : {0, 1, 2, 7, 13, 100, 101}) {
    for (int64_t world = 1; world <= 5; ++world) {
      for (const bool shuffle : {false, true}) {
        for (const int64_t epoch : {0, 3}) {
          std::vector<int> seen(static_cast<size_t>(n), 0);
          int64_t smallest = n, largest = 0;
          for (int64_t rank = 0; rank < world; ++rank) {
            const ShardedSampler sampler({n, world, rank, shuffle, 42});
            const std::vector<int64_t> mine = sampler.epoch_indices(epoch);
            EXPECT_EQ(static_cast<int64_t>(mine.size()), sampler.shard_size());
            EXPECT_LE(sampler.shard_size(), sampler.max_shard_size());
            smallest = std::min<int64_t>(smallest, static_cast<int64_t>(mine.size()));
            largest = std::max<int64_t>(largest, static_cast<int64_t>(mine.size()));
            for (const int64_t i : mine) {
              ASSERT_GE(i, 0);
              ASSERT_LT(i, n);
              ++seen[static_cast<size_t>(i)];
            }
          }
          for (int64_t i = 0; i < n; ++i) {
            EXPECT_EQ(seen[static_cast<size_t>(i)], 1)
                << "n " << n << " world " << world << " index " << i;
          }
          EXPECT_LE(largest - smallest, 1) << "n " << n << " world " << world;
        }
      }
    }
  }
}

TEST(Sampler, RemainderGoesToTheFirstRanks) {
  EXPECT_EQ(shard_range(11, 4, 0).begin, 0);
  EXPECT_EQ(shard_range(11, 4, 0).end, 3);
  EXPECT_EQ(shard_range(11, 4, 2).begin, 6);
  EXPECT_EQ(shard_range(11, 4, 2).end, 9);
  EXPECT_EQ(shard_range(11, 4, 3).size(), 2);
  EXPECT_EQ(shard_range(2, 5, 4).size(), 0);
  EXPECT_THROW(shard_range(10, 3, 3), UsageError);
  EXPECT_THROW(shard_range(10, 0, 0), UsageError);
}

TEST(Sampler, OrderIsDeterministicPerSeedAndEpoch) {
  const std::vector<int64_t> a = shuffled_order(50, 7, 2);
  EXPECT_EQ(a, shuffled_order(50, 7, 2));
  EXPECT_NE(a, shuffled_order(50, 7, 3));
  EXPECT_NE(a, shuffled_order(50, 8, 2));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, sequential_order(50));
  EXPECT_NE(a, sequential_order(50));
  EXPECT_EQ(ShardedSampler({50, 1, 0, false, 7}).epoch_indices(4), sequential_order(50));
}

// The documented algorithm, spelled out: Fisher-Yates from the end with
// Rng(seed + epoch). Pins the order so that a change breaks resumed runs
// visibly rather than silently.
TEST(Sampler, ShuffleFollowsTheDocumentedAlgorithm) {
  std::vector<int64_t> want = sequential_order(10);
  Rng rng(100 + 5);
  for (int64_t i = 9; i > 0; --i) {
    std::swap(want[static_cast<size_t>(i)],
              want[static_cast<size_t>(rng.below(static_cast<uint64_t>(i) + 1))]);
  }
  EXPECT_EQ(shuffled_order(10, 100, 5), want);
}

}  // namespace
}  // namespace dtrain::data
