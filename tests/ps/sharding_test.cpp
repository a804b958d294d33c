#include "ps/sharding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

std::vector<DenseSpec> model_specs() {
  return {{"fc1.weight", {300, 784}}, {"fc1.bias", {300}}, {"empty", {0}},
          {"fc2.weight", {10, 300}},  {"fc2.bias", {10}},  {"scalar", {}}};
}

TEST(ShardPlan, CoversEveryElementOnceWithRangesDifferingByAtMostOne) {
  for (int servers : {1, 2, 3, 4, 5, 7}) {
    const ShardPlan plan(model_specs(), servers);
    std::vector<int> owner_count(static_cast<size_t>(plan.total_numel()), 0);
    int64_t smallest = plan.total_numel();
    int64_t largest = 0;
    for (int s = 0; s < servers; ++s) {
      smallest = std::min(smallest, plan.range_numel(s));
      largest = std::max(largest, plan.range_numel(s));
      int64_t shard_at = 0;
      for (const ShardSlice& slice : plan.slices(s)) {
        EXPECT_EQ(slice.shard_offset, shard_at);
        EXPECT_GT(slice.count, 0);
        const int64_t flat = plan.tensor_begin(slice.tensor) + slice.offset;
        EXPECT_EQ(flat, plan.range_begin(s) + slice.shard_offset);
        for (int64_t i = 0; i < slice.count; ++i) ++owner_count[static_cast<size_t>(flat + i)];
        shard_at += slice.count;
      }
      EXPECT_EQ(shard_at, plan.range_numel(s));
    }
    for (size_t i = 0; i < owner_count.size(); ++i) ASSERT_EQ(owner_count[i], 1) << "element " << i;
    EXPECT_LE(largest - smallest, 1) << servers << " servers";
  }
}

TEST(ShardPlan, SplitsALargeTensorAcrossServers) {
  const ShardPlan plan({{"big", {1000}}, {"small", {2}}}, 2);
  ASSERT_EQ(plan.slices(0).size(), 1u);
  ASSERT_EQ(plan.slices(1).size(), 2u);
  EXPECT_EQ(plan.slices(0)[0].count, 501);
  EXPECT_EQ(plan.slices(1)[0].tensor, 0u);
  EXPECT_EQ(plan.slices(1)[0].offset, 501);
  EXPECT_EQ(plan.slices(1)[0].count, 499);
  EXPECT_EQ(plan.slices(1)[1].tensor, 1u);
  EXPECT_EQ(plan.slices(1)[1].count, 2);
}

TEST(ShardPlan, MoreServersThanElementsLeavesSomeEmpty) {
  const ShardPlan plan({{"w", {2}}}, 3);
  EXPECT_EQ(plan.range_numel(0) + plan.range_numel(1) + plan.range_numel(2), 2);
  EXPECT_TRUE(plan.slices(0).empty());
}

TEST(ShardPlan, RejectsBadInput) {
  testing::expect_usage_error(
      [] {
        ShardPlan({{"w", {2}}}, 0);
      },
      "ps shard plan: 0 servers; need at least 1");
  testing::expect_usage_error(
      [] {
        ShardPlan({{"w", {2}}, {"w", {3}}}, 1);
      },
      "ps shard plan: dense tensor name 'w' appears twice");
  testing::expect_usage_error(
      [] {
        ShardPlan({{"w", {2, -1}}}, 1);
      },
      "ps shard plan: tensor 'w' has a negative extent in (2, -1)");
  const ShardPlan plan({{"w", {2}}}, 2);
  testing::expect_usage_error([&] { (void)plan.slices(2); },
                              "ps shard plan: server 2 out of range [0, 2)");
}

TEST(SparsePlacement, SpreadsKeysEvenlyAndDependsOnTheTable) {
  for (int servers : {2, 3}) {
    std::vector<int> counts(static_cast<size_t>(servers), 0);
    const int keys = 30000;
    for (uint64_t key = 0; key < static_cast<uint64_t>(keys); ++key) {
      ++counts[static_cast<size_t>(sparse_server_of(0, key * 7919, servers))];
    }
    for (int c : counts) {
      EXPECT_NEAR(c, keys / servers, keys / servers / 20) << servers << " servers";
    }
  }
  int differ = 0;
  for (uint64_t key = 0; key < 100; ++key)
    differ += sparse_server_of(0, key, 2) != sparse_server_of(1, key, 2);
  EXPECT_GT(differ, 20);
}

TEST(SparseInit, IsDeterministicPerSeedTableAndKey) {
  std::vector<float> a(16), b(16), c(16), d(16);
  init_sparse_row(7, 0, 123456789, 0.1f, a);
  init_sparse_row(7, 0, 123456789, 0.1f, b);
  init_sparse_row(7, 1, 123456789, 0.1f, c);
  init_sparse_row(8, 0, 123456789, 0.1f, d);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  double sum_sq = 0;
  std::vector<float> row(64);
  for (uint64_t key = 0; key < 200; ++key) {
    init_sparse_row(1, 0, key, 0.1f, row);
    for (float v : row) sum_sq += double{v} * v;
  }
  EXPECT_NEAR(std::sqrt(sum_sq / (200 * 64)), 0.1, 0.01);
  init_sparse_row(1, 0, 5, 0.0f, row);
  for (float v : row) EXPECT_EQ(v, 0.0f);
}

// The row init's values are N(0, std^2): mean, the shares within 1 and 2
// standard deviations, the largest |z| (5.8 at most: 24-bit uniforms), no
// correlation between the two values of a Box-Muller pair, and rows of odd
// and long dimensions filled to their end.
TEST(SparseInit, ValuesFollowTheNormalDistribution) {
  const int rows = 4000;
  std::vector<float> row(17);
  double sum = 0, within1 = 0, within2 = 0, pair_product = 0, max_z = 0;
  for (int key = 0; key < rows; ++key) {
    init_sparse_row(3, 1, static_cast<uint64_t>(key), 0.5f, row);
    for (size_t i = 0; i < row.size(); ++i) {
      const double z = row[i] / 0.5;
      sum += z;
      within1 += std::abs(z) < 1.0;
      within2 += std::abs(z) < 2.0;
      max_z = std::max(max_z, std::abs(z));
      if (i % 2 == 0 && i + 1 < row.size()) pair_product += z * (row[i + 1] / 0.5);
    }
  }
  const double n = rows * 17.0;
  EXPECT_NEAR(sum / n, 0.0, 0.02);
  EXPECT_NEAR(within1 / n, 0.6827, 0.01);
  EXPECT_NEAR(within2 / n, 0.9545, 0.005);
  EXPECT_LT(max_z, 5.8);
  EXPECT_GT(max_z, 3.0);
  EXPECT_NEAR(pair_product / (rows * 8.0), 0.0, 0.03);
  std::vector<float> long_row(100, 7.0f);
  init_sparse_row(3, 1, 9, 0.5f, long_row);
  for (float v : long_row) EXPECT_NE(v, 7.0f);
  EXPECT_NE(long_row[98], long_row[99]);
}

// Rows initialised together equal each row initialised alone, bit for bit,
// for dimensions that end a pair, split one, and fill more than one batch
// of pairs (256) per row, and for batches that cut through a row.
TEST(SparseInit, RowsInitialisedTogetherEqualEachAlone) {
  for (size_t dim : {size_t{1}, size_t{2}, size_t{16}, size_t{17}, size_t{600}}) {
    std::vector<uint64_t> keys;
    for (uint64_t k = 0; k < 97; ++k) keys.push_back(k * 0x9E3779B97F4A7C15ull);
    std::vector<float> together(keys.size() * dim, -1.0f);
    std::vector<float*> rows;
    for (size_t i = 0; i < keys.size(); ++i) rows.push_back(together.data() + i * dim);
    init_sparse_rows(5, 3, keys, 0.25f, dim, rows);
    for (size_t i = 0; i < keys.size(); ++i) {
      std::vector<float> alone(dim, 7.0f);
      init_sparse_row(5, 3, keys[i], 0.25f, alone);
      ASSERT_EQ(0, std::memcmp(alone.data(), rows[i], dim * sizeof(float)))
          << "dim " << dim << ", row " << i;
      ASSERT_NE(alone[dim - 1], 7.0f) << "dim " << dim;
    }
  }
  std::vector<float> zero(8, 3.0f);
  float* const row = zero.data();
  const uint64_t key = 9;
  init_sparse_rows(5, 3, {&key, 1}, 0.0f, zero.size(), {&row, 1});
  for (float v : zero) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace dtrain::ps
