#include "data/loader.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "data/sampler.h"
#include "data/synthetic.h"

namespace dtrain::data {
namespace {

// Sample i has features [i, i + 0.5, i + 0.25] and label i % 3.
TensorDataset counting_dataset(int64_t n) {
  std::vector<float> values;
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) {
    values.insert(values.end(), {static_cast<float>(i), i + 0.5f, i + 0.25f});
    labels.push_back(i % 3);
  }
  return TensorDataset(Tensor::from_vector(values, {n, 3}), labels, 3);
}

std::vector<Batch> drain(DataLoader& loader) {
  std::vector<Batch> out;
  while (auto batch = loader.next()) out.push_back(std::move(*batch));
  return out;
}

TEST(Loader, BatchesFollowTheOrderWithAPartialLastBatch) {
  const TensorDataset ds = counting_dataset(10);
  DataLoader loader(ds, {.batch_size = 4, .drop_last = false, .prefetch = 0});
  loader.start_epoch({9, 0, 3, 1, 2, 8, 7, 6, 5, 4});
  EXPECT_EQ(loader.batches_in_epoch(), 3);
  const std::vector<Batch> batches = drain(loader);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].indices, (std::vector<int64_t>{9, 0, 3, 1}));
  EXPECT_EQ(batches[0].y, (std::vector<int64_t>{0, 0, 0, 1}));
  EXPECT_EQ(batches[0].x.shape(), (Shape{4, 3}));
  EXPECT_EQ(batches[0].x.to_vector(),
            (std::vector<float>{9, 9.5f, 9.25f, 0, 0.5f, 0.25f, 3, 3.5f, 3.25f, 1, 1.5f, 1.25f}));
  EXPECT_EQ(batches[2].indices, (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(batches[2].size(), 2);
  EXPECT_FALSE(loader.next().has_value());
}

TEST(Loader, DropLastDropsThePartialBatch) {
  const TensorDataset ds = counting_dataset(10);
  for (const int64_t prefetch : {0, 2}) {
    DataLoader loader(ds, {.batch_size = 4, .drop_last = true, .prefetch = prefetch});
    loader.start_epoch(sequential_order(10));
    const std::vector<Batch> batches = drain(loader);
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(batches[1].indices, (std::vector<int64_t>{4, 5, 6, 7}));
  }
  EXPECT_EQ(DataLoader::batch_count(10, 4, true), 2);
  EXPECT_EQ(DataLoader::batch_count(10, 4, false), 3);
  EXPECT_EQ(DataLoader::batch_count(8, 4, false), 2);
  EXPECT_EQ(DataLoader::batch_count(0, 4, false), 0);
}

TEST(Loader, PrefetchingGivesTheSameBatchesAsTheSynchronousPath) {
  const TensorDataset ds = make_gaussian_blobs({.samples = 203, .features = 5, .num_classes = 3});
  const ShardedSampler sampler({.dataset_size = 203, .world_size = 2, .rank = 1, .seed = 9});
  for (const int64_t prefetch : {1, 2, 5}) {
    DataLoader sync(ds, {.batch_size = 16, .prefetch = 0});
    DataLoader ahead(ds, {.batch_size = 16, .prefetch = prefetch});
    for (const int64_t epoch : {0, 1}) {
      sync.start_epoch(sampler.epoch_indices(epoch));
      ahead.start_epoch(sampler.epoch_indices(epoch));
      const std::vector<Batch> a = drain(sync);
      const std::vector<Batch> b = drain(ahead);
      ASSERT_EQ(a.size(), b.size());
      ASSERT_EQ(a.size(), 7u);  // 101 samples in batches of 16
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].indices, b[i].indices);
        EXPECT_EQ(a[i].y, b[i].y);
        ASSERT_EQ(a[i].x.shape(), b[i].x.shape());
        EXPECT_EQ(std::memcmp(a[i].x.data(), b[i].x.data(), a[i].x.numel() * sizeof(float)), 0);
      }
    }
  }
}

TEST(Loader, OrderIsDeterministicPerSeedAndEpoch) {
  const TensorDataset ds = counting_dataset(40);
  const auto epoch_indices = [&](uint64_t seed, int64_t epoch) {
    DataLoader loader(ds, {.batch_size = 8, .prefetch = 2});
    loader.start_epoch(ShardedSampler({.dataset_size = 40, .seed = seed}).epoch_indices(epoch));
    std::vector<int64_t> seen;
    for (const Batch& b : drain(loader))
      seen.insert(seen.end(), b.indices.begin(), b.indices.end());
    return seen;
  };
  EXPECT_EQ(epoch_indices(1, 0), epoch_indices(1, 0));
  EXPECT_EQ(epoch_indices(1, 0), shuffled_order(40, 1, 0));
  EXPECT_NE(epoch_indices(1, 0), epoch_indices(1, 1));
}

// Abandoning an epoch (restart or destruction) while the background thread
// is blocked on a full queue must stop and join it promptly; ctest's TIMEOUT
// catches a hang and ASan's leak check a leaked batch.
TEST(Loader, ShutdownMidEpochDoesNotHang) {
  const TensorDataset ds = counting_dataset(1000);
  for (int round = 0; round < 20; ++round) {
    DataLoader loader(ds, {.batch_size = 10, .prefetch = 3});
    loader.start_epoch(sequential_order(1000));
    ASSERT_TRUE(loader.next().has_value());
    if (round % 2 == 0) {
      loader.start_epoch(sequential_order(1000));  // restart mid-epoch
      const auto first = loader.next();
      ASSERT_TRUE(first.has_value());
      EXPECT_EQ(first->indices.front(), 0);
    }
  }  // destroyed with batches queued and the producer waiting for room
  DataLoader never_started(ds, {.batch_size = 10, .prefetch = 3});
  EXPECT_THROW(never_started.next(), UsageError);
}

TEST(Loader, BackgroundErrorsAreRethrownInTheConsumer) {
  const TensorDataset ds = counting_dataset(10);
  for (const int64_t prefetch : {0, 1, 4}) {
    DataLoader loader(ds, {.batch_size = 3, .prefetch = prefetch});
    loader.start_epoch({0, 1, 2, 3, 4, 5, 6, 77, 8});
    ASSERT_TRUE(loader.next().has_value());
    ASSERT_TRUE(loader.next().has_value());
    try {
      loader.next();
      FAIL() << "no error, prefetch " << prefetch;
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()),
                "data loader: sample index 77 is outside the dataset's 10 samples");
    }
    EXPECT_FALSE(loader.next().has_value());   // the epoch ended with the error
    loader.start_epoch(sequential_order(10));  // and the loader is usable again
    EXPECT_EQ(drain(loader).size(), 4u);
  }
}

TEST(Loader, RejectsBadOptions) {
  const TensorDataset ds = counting_dataset(4);
  EXPECT_THROW(DataLoader(ds, {.batch_size = 0}), UsageError);
  EXPECT_THROW(DataLoader(ds, {.batch_size = 2, .prefetch = -1}), UsageError);
}

}  // namespace
}  // namespace dtrain::data
