// The last bucket's own cap (AllReduceOptions::last_bucket_bytes): which
// parameters move to a bucket of their own, when nothing moves, that the
// split leaves the trained parameters bit-identical (two ranks: each
// element's sum is the same a + b whichever bucket carries it); and the
// scheduler slice the strategy requests for its communicator's thread.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include "core/scheduler_slice.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/coalescing_bucketer.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;
using test::make_batches;
using test::make_mlp;
using test::run_workers;
using test::sgd;
using test::snapshot;

// LeNet-5's parameters in registration order: conv1 weight and bias, conv2
// weight and bias, fc1, fc2, fc3 (weight, bias each).
const std::vector<int64_t> kLeNet5Numels{150, 6, 2400, 16, 48000, 120, 10080, 84, 840, 10};
constexpr size_t kKiB = 1024;

std::vector<size_t> params_of(const CoalescingBucketer& b, size_t bucket) {
  return {b.params_of(bucket).begin(), b.params_of(bucket).end()};
}

void ignore(size_t, std::span<float>) {}

TEST(LastBucket, LeNet5sConvolutionsLeaveFc1sWeightInABucketOfItsOwn) {
  // Without a last cap: fc3, fc2 and fc1's bias in bucket 0 (64 KiB), then
  // fc1's weight in one bucket with both convolutions.
  CoalescingBucketer plain(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, 3, ignore);
  ASSERT_EQ(plain.bucket_count(), 2u);
  EXPECT_EQ(params_of(plain, 0), (std::vector<size_t>{9, 8, 7, 6, 5}));
  EXPECT_EQ(params_of(plain, 1), (std::vector<size_t>{4, 3, 2, 1, 0}));
  // With it: the convolutions (10.3 KB) last, fc1's weight (188 KiB) alone.
  CoalescingBucketer split(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, 64 * kKiB, 3, ignore);
  ASSERT_EQ(split.bucket_count(), 3u);
  EXPECT_EQ(params_of(split, 0), params_of(plain, 0));
  EXPECT_EQ(params_of(split, 1), (std::vector<size_t>{4}));
  EXPECT_EQ(params_of(split, 2), (std::vector<size_t>{3, 2, 1, 0}));
  EXPECT_EQ(split.bucket_floats(2), 4u + 16 + 2400 + 6 + 150);
  // The tail fills up to the cap exactly: conv1 and conv2's weight (10,224
  // bytes) fit in 10,224, conv2's bias no longer.
  CoalescingBucketer exact(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, (150 + 6 + 2400) * 4, 3, ignore);
  ASSERT_EQ(exact.bucket_count(), 3u);
  EXPECT_EQ(params_of(exact, 1), (std::vector<size_t>{4, 3}));
  EXPECT_EQ(params_of(exact, 2), (std::vector<size_t>{2, 1, 0}));
}

TEST(LastBucket, TailTakesAtLeastOneParameterAndLeavesOneBehind) {
  // A cap below the first layer's weight still moves that weight alone.
  CoalescingBucketer zero(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, 0, 3, ignore);
  ASSERT_EQ(zero.bucket_count(), 3u);
  EXPECT_EQ(params_of(zero, 1), (std::vector<size_t>{4, 3, 2, 1}));
  EXPECT_EQ(params_of(zero, 2), (std::vector<size_t>{0}));
  // A cap above the whole bucket splits nothing; one byte under it moves all but fc1.weight.
  CoalescingBucketer roomy(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, 1024 * kKiB - 1, 3, ignore);
  EXPECT_EQ(roomy.bucket_count(), 2u);  // 202 KB <= the cap: nothing to split
  CoalescingBucketer just_under(kLeNet5Numels, 64 * kKiB, 1024 * kKiB,
                                (48000 + 16 + 2400 + 6 + 150) * 4 - 1, 3, ignore);
  ASSERT_EQ(just_under.bucket_count(), 3u);
  EXPECT_EQ(params_of(just_under, 1), (std::vector<size_t>{4}));
}

TEST(LastBucket, NoSplitOfBucketZeroOrOfABucketWithinItsCap) {
  // The whole model in bucket 0: it stays the only bucket.
  CoalescingBucketer single(kLeNet5Numels, 1024 * kKiB, 1024 * kKiB, 0, 3, ignore);
  EXPECT_EQ(single.bucket_count(), 1u);
  // A last cap at bucket_bytes is the plain layout: a bucket over it holds
  // one parameter, which cannot be split.
  CoalescingBucketer at_bucket_bytes(kLeNet5Numels, 4 * kKiB, 64 * kKiB, 64 * kKiB, 3, ignore);
  CoalescingBucketer plain(kLeNet5Numels, 4 * kKiB, 64 * kKiB, 3, ignore);
  ASSERT_EQ(at_bucket_bytes.bucket_count(), plain.bucket_count());
  for (size_t b = 0; b < plain.bucket_count(); ++b) {
    EXPECT_EQ(params_of(at_bucket_bytes, b), params_of(plain, b)) << "bucket " << b;
  }
}

TEST(LastBucket, TheSplitBucketLaunchesBeforeTheFirstLayersGradientsArrive) {
  std::vector<size_t> launched;
  CoalescingBucketer b(kLeNet5Numels, 64 * kKiB, 1024 * kKiB, 64 * kKiB, 3,
                       [&](size_t bucket, std::span<float>) { launched.push_back(bucket); });
  b.begin_pass();
  for (size_t k = kLeNet5Numels.size(); k-- > 4;) {
    b.mark_ready(k, std::vector<float>(static_cast<size_t>(kLeNet5Numels[k]), 1.0f));
  }
  // Backward has reached fc1 (its weight is in): the convolutions are pending.
  EXPECT_EQ(launched, (std::vector<size_t>{0, 1}));
  for (size_t k = 4; k-- > 0;) {
    b.mark_ready(k, std::vector<float>(static_cast<size_t>(kLeNet5Numels[k]), 1.0f));
  }
  EXPECT_EQ(launched, (std::vector<size_t>{0, 1, 2}));
}

// make_mlp's parameters: fc1.weight (384 B), fc1.bias (64 B), fc2.weight
// (192 B), fc2.bias (12 B). With bucket 0 capped at fc2 (204 B), the rest
// (448 B) is one bucket unless the last cap splits fc1's weight off.
constexpr size_t kFc2Bytes = (48 + 3) * sizeof(float);

std::vector<std::vector<float>> train_two_ranks(size_t last_bucket_bytes, size_t buckets) {
  std::vector<std::vector<float>> params;
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = size_t{1} << 20;
    options.first_bucket_bytes = kFc2Bytes;
    options.last_bucket_bytes = last_bucket_bytes;
    AllReduceStrategy strategy(make_mlp(rank == 0 ? 1 : 7), sgd(), comm, options);
    EXPECT_EQ(strategy.bucket_count(), buckets);
    for (const test::Batch& batch : make_batches(3, 4, 30 + static_cast<uint64_t>(rank))) {
      strategy.train_step(batch.x, batch.y);
    }
    if (rank == 0) {
      params = snapshot(strategy.model());
      EXPECT_EQ(strategy.overlap_stats().launched_in_backward, static_cast<int64_t>(buckets));
    }
  });
  return params;
}

TEST(LastBucket, SplitRunIsBitIdenticalToTheUnsplitRun) {
  const auto unsplit = train_two_ranks(size_t{1} << 20, 2);
  const auto split = train_two_ranks(384, 3);
  ASSERT_FALSE(split.empty());
  EXPECT_EQ(split, unsplit);
}

// Whether this kernel records a requested slice (Linux 6.12 and later), probed
// on a thread of its own so the test's thread keeps its default.
bool kernel_records_slices() {
  bool recorded = false;
  std::jthread([&] { recorded = request_scheduler_slice(300us); }).join();
  return recorded;
}

// A new thread's slice: the default, since the test's threads request none.
std::optional<std::chrono::microseconds> default_slice() {
  std::optional<std::chrono::microseconds> slice;
  std::jthread([&] { slice = scheduler_slice(); }).join();
  return slice;
}

// A slice other than the default, so that reading it back means it was set.
std::chrono::microseconds other_than_default() { return default_slice() == 250us ? 350us : 250us; }

TEST(SchedulerSlice, RequestedSliceReadsBackClampedToTheKernelsRange) {
  if (!kernel_records_slices()) GTEST_SKIP() << "this kernel does not record a thread's slice";
  const std::chrono::microseconds wanted = other_than_default();
  std::optional<std::chrono::microseconds> after, clamped;
  std::jthread([&] {
    EXPECT_TRUE(request_scheduler_slice(wanted));
    after = scheduler_slice();
    EXPECT_TRUE(request_scheduler_slice(10us));
    clamped = scheduler_slice();
  }).join();
  EXPECT_EQ(after, wanted);
  EXPECT_EQ(clamped, 100us);
  EXPECT_NE(default_slice(), wanted);  // other threads keep theirs
}

TEST(SchedulerSlice, StrategyGivesItToTheCommunicatorsThreadOnlyWhenAsked) {
  if (!kernel_records_slices()) GTEST_SKIP() << "this kernel does not record a thread's slice";
  const std::optional<std::chrono::microseconds> fallback = default_slice();
  const std::chrono::microseconds wanted = other_than_default();
  for (const auto slice : {0us, wanted}) {
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      std::optional<std::chrono::microseconds> worker;
      AllReduceOptions options;
      options.comm_thread_slice = slice;
      AllReduceStrategy strategy(make_mlp(1), sgd(), comm, options);
      comm.submit("read the slice", [&] { worker = scheduler_slice(); })
          .wait(Deadline::after(std::chrono::seconds(20)));
      EXPECT_EQ(worker, slice == 0us ? fallback : slice) << "rank " << rank;
      // The training thread keeps its default.
      EXPECT_EQ(scheduler_slice(), fallback) << "rank " << rank;
    });
  }
}

TEST(SchedulerSlice, NegativeSliceIsRefused) {
  run_workers(1, [&](int, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.comm_thread_slice = -1us;
    EXPECT_THROW(AllReduceStrategy(make_mlp(1), sgd(), comm, options), UsageError);
  });
}

}  // namespace
}  // namespace dtrain::strategy
