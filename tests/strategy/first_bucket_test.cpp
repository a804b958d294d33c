// The first bucket's own cap (AllReduceOptions::first_bucket_bytes, DDP's
// first_bucket_bytes): which parameters it holds, that it launches while
// later gradients are still pending, and that splitting a single bucket this
// way leaves the trained parameters bit-identical (two ranks: each element's
// sum is the same a + b whichever bucket carries it). And OverlapStats'
// allreduce time measured from the communicator's execution of each bucket.
#include <gtest/gtest.h>

#include <vector>

#include "strategy/allreduce_strategy.h"
#include "strategy/coalescing_bucketer.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using test::make_batches;
using test::make_mlp;
using test::run_workers;
using test::sgd;
using test::snapshot;

// make_mlp's parameters in registration order: fc1.weight 6x16, fc1.bias 16,
// fc2.weight 16x3, fc2.bias 3. Backward finishes them last first: fc2.bias
// (12 B), fc2.weight (192 B), fc1.bias (64 B), fc1.weight (384 B).
const std::vector<int64_t> kMlpNumels{96, 16, 48, 3};
constexpr size_t kFc2Bytes = (48 + 3) * sizeof(float);  // 204

std::vector<size_t> params_of(const CoalescingBucketer& b, size_t bucket) {
  return {b.params_of(bucket).begin(), b.params_of(bucket).end()};
}

TEST(FirstBucket, CapHoldsTheLastLayersAndTheRestFollowsAtBucketBytes) {
  const auto ignore = [](size_t, std::span<float>) {};
  CoalescingBucketer fc2_only(kMlpNumels, kFc2Bytes, size_t{1} << 20, 1, ignore);
  ASSERT_EQ(fc2_only.bucket_count(), 2u);
  EXPECT_EQ(params_of(fc2_only, 0), (std::vector<size_t>{3, 2}));
  EXPECT_EQ(params_of(fc2_only, 1), (std::vector<size_t>{1, 0}));
  // One byte less: fc2.weight no longer fits after fc2.bias.
  CoalescingBucketer bias_only(kMlpNumels, kFc2Bytes - 1, size_t{1} << 20, 1, ignore);
  ASSERT_EQ(bias_only.bucket_count(), 2u);
  EXPECT_EQ(params_of(bias_only, 0), (std::vector<size_t>{3}));
  EXPECT_EQ(params_of(bias_only, 1), (std::vector<size_t>{2, 1, 0}));
  // A cap of 0 still takes one parameter; later buckets use bucket_bytes (0: one each).
  CoalescingBucketer zero(kMlpNumels, 0, 256, 1, ignore);
  ASSERT_EQ(zero.bucket_count(), 3u);
  EXPECT_EQ(params_of(zero, 1), (std::vector<size_t>{2, 1}));
  EXPECT_EQ(params_of(zero, 2), (std::vector<size_t>{0}));
  // A cap as large as bucket_bytes is the plain layout.
  CoalescingBucketer plain(kMlpNumels, size_t{1} << 20, size_t{1} << 20, 1, ignore);
  EXPECT_EQ(plain.bucket_count(), 1u);
}

TEST(FirstBucket, LaunchesBeforeTheEarlierLayersGradientsArrive) {
  std::vector<size_t> launched;
  CoalescingBucketer b(kMlpNumels, kFc2Bytes, size_t{1} << 20, 1,
                       [&](size_t bucket, std::span<float>) { launched.push_back(bucket); });
  b.begin_pass();
  b.mark_ready(3, std::vector<float>(3, 1.0f));
  b.mark_ready(2, std::vector<float>(48, 1.0f));
  // fc1's gradients are still pending (backward is still running) and bucket 0 is out.
  EXPECT_EQ(launched, (std::vector<size_t>{0}));
  EXPECT_FALSE(b.is_marked(1));
  b.mark_ready(1, std::vector<float>(16, 1.0f));
  b.mark_ready(0, std::vector<float>(96, 1.0f));
  EXPECT_EQ(launched, (std::vector<size_t>{0, 1}));
}

// Trains two ranks for three steps; returns rank 0's parameters and its last
// step's count of buckets launched inside backward().
std::pair<std::vector<std::vector<float>>, int64_t> train_two_ranks(size_t first_bucket_bytes) {
  std::vector<std::vector<float>> params;
  int64_t in_backward = -1;
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = size_t{1} << 20;           // the whole MLP in one bucket ...
    options.first_bucket_bytes = first_bucket_bytes;  // ... unless the first is capped
    AllReduceStrategy strategy(make_mlp(rank == 0 ? 1 : 7), sgd(), comm, options);
    for (const test::Batch& batch : make_batches(3, 4, 20 + static_cast<uint64_t>(rank))) {
      strategy.train_step(batch.x, batch.y);
    }
    if (rank == 0) {
      params = snapshot(strategy.model());
      in_backward = strategy.overlap_stats().launched_in_backward;
      EXPECT_EQ(strategy.overlap_stats().buckets, first_bucket_bytes < (size_t{1} << 20) ? 2 : 1);
    }
  });
  return {params, in_backward};
}

TEST(FirstBucket, SplitRunIsBitIdenticalToTheSingleBucketRunAndLaunchesTwiceInBackward) {
  const auto [single, single_in_backward] = train_two_ranks(size_t{1} << 20);
  const auto [split, split_in_backward] = train_two_ranks(kFc2Bytes);
  EXPECT_EQ(split, single);
  // Every hook fires inside backward(): the single bucket leaves at the last
  // hook, the split's first bucket at fc2.weight's hook, before fc1's.
  EXPECT_EQ(single_in_backward, 1);
  EXPECT_EQ(split_in_backward, 2);
}

// The measured execution: present for dense overlapped buckets, absent in
// blocking mode; nothing counts as hidden on a worker without rows (no
// backward ran), and the hidden part never exceeds the whole.
TEST(OverlapExecution, MeasuredOnTheCommunicatorsThreadForDenseOverlappedBuckets) {
  const test::Batch batch = make_batches(1, 4, 5)[0];
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.first_bucket_bytes = kFc2Bytes;
    AllReduceStrategy overlapped(make_mlp(1), sgd(), comm, options);
    AllReduceStrategy blocking(make_mlp(1), sgd(), static_cast<comm::Collectives&>(comm), options);
    for (AllReduceStrategy* strategy : {&overlapped, &blocking}) {
      if (rank == 0) {
        strategy->train_step(batch.x, batch.y);
      } else {
        strategy->train_step(Tensor(), {});
      }
    }
    const OverlapStats& o = overlapped.overlap_stats();
    EXPECT_TRUE(o.measured_execution);
    EXPECT_GT(o.allreduce_s, 0.0);
    EXPECT_GE(o.hidden_s, 0.0);
    EXPECT_LE(o.hidden_s, o.allreduce_s);
    EXPECT_EQ(o.launched_in_backward, rank == 0 ? 2 : 0);
    if (rank == 1) {
      EXPECT_EQ(o.hidden_s, 0.0);
      EXPECT_EQ(o.hidden_share(), 0.0);
    }
    EXPECT_FALSE(blocking.overlap_stats().measured_execution);
    EXPECT_EQ(blocking.overlap_stats().hidden_s, 0.0);
  });
}

}  // namespace
}  // namespace dtrain::strategy
