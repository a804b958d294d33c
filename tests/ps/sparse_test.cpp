#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/rng.h"
#include "ps/shard_store.h"
#include "ps_test_util.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;

std::vector<float> init_row(uint64_t seed, uint32_t table, uint64_t key, float std, int64_t dim) {
  std::vector<float> row(static_cast<size_t>(dim));
  init_sparse_row(seed, table, key, std, row);
  return row;
}

std::vector<float> row_of(const Tensor& rows, int64_t i) {
  const int64_t d = rows.size(1);
  return {rows.data() + i * d, rows.data() + (i + 1) * d};
}

TEST(SparseTables, RowsAreCreatedOnFirstTouchWithTheDeterministicInit) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  options.seed = 11;
  options.optimizer.type = "sgd";
  PsJob job(2, 2, options);
  const std::vector<SparseTableSpec> tables{{"user", 4, 0.1f}, {"item", 3, 0.5f}};
  auto a = job.client(0);
  auto b = job.client(1);
  a->init({}, tables);
  b->init({}, tables);
  const std::vector<uint64_t> keys{5, uint64_t{1} << 40, 77, 5, 123456789};
  Tensor rows = Tensor::zeros({5, 4});
  a->pull_rows(0, keys, rows);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(row_of(rows, static_cast<int64_t>(i)), init_row(11, 0, keys[i], 0.1f, 4))
        << "key " << keys[i];
  }
  // Another worker, another table: the same rule.
  Tensor items = Tensor::zeros({2, 3});
  b->pull_rows(1, std::vector<uint64_t>{5, 6}, items);
  EXPECT_EQ(row_of(items, 0), init_row(11, 1, 5, 0.5f, 3));
  EXPECT_EQ(row_of(items, 1), init_row(11, 1, 6, 0.5f, 3));
  const ServerStats s0 = a->stats(0), s1 = a->stats(1);
  EXPECT_EQ(s0.sparse_rows + s1.sparse_rows, 6u);  // 4 distinct user keys + 2 item keys
}

TEST(SparseTables, PushesUpdateOnlyTheTouchedRowsAndSumDuplicates) {
  ServerOptions options;
  options.consistency = Consistency::kSync;  // sparse pushes apply at once in every mode
  options.seed = 3;
  options.optimizer.type = "sgd";
  PsJob job(2, 1, options);
  const std::vector<SparseTableSpec> tables{{"emb", 2, 0.1f}};
  auto c = job.client(0);
  c->init({}, tables);
  const std::vector<uint64_t> all{10, 20, 30};
  Tensor before = Tensor::zeros({3, 2});
  c->pull_rows(0, all, before);
  const std::vector<uint64_t> pushed{10, 30, 10};
  const Tensor grads = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2});
  c->push_rows(0, pushed, grads, 0.5f);
  Tensor after = Tensor::zeros({3, 2});
  c->pull_rows(0, all, after);
  EXPECT_FLOAT_EQ(after.at({0, 0}), before.at({0, 0}) - 0.5f * (1 + 5));
  EXPECT_FLOAT_EQ(after.at({0, 1}), before.at({0, 1}) - 0.5f * (2 + 6));
  EXPECT_EQ(row_of(after, 1), row_of(before, 1));
  EXPECT_FLOAT_EQ(after.at({2, 0}), before.at({2, 0}) - 0.5f * 3);
  EXPECT_FLOAT_EQ(after.at({2, 1}), before.at({2, 1}) - 0.5f * 4);
  EXPECT_EQ(c->stats(0).version, 0u);  // the dense version is untouched
}

TEST(SparseTables, KeysSpreadOverTheServersAndEachServerHoldsOnlyItsOwn) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  PsJob job(2, 1, options);
  auto c = job.client(0);
  c->init({}, {{"emb", 8, 0.01f}});
  std::vector<uint64_t> keys;
  Rng rng(4);
  for (int i = 0; i < 512; ++i) keys.push_back(rng.next_u64());
  Tensor rows = Tensor::zeros({512, 8});
  c->pull_rows(0, keys, rows);
  const uint64_t on0 = c->stats(0).sparse_rows, on1 = c->stats(1).sparse_rows;
  EXPECT_EQ(on0 + on1, 512u);
  EXPECT_GT(on0, 200u);
  EXPECT_GT(on1, 200u);
  job.stop();
  const StateDict state0 = job.server(0).state_dict();
  const Tensor& held = state0.at("sparse.emb.keys");
  for (int64_t i = 0; i < held.size(0); ++i) {
    EXPECT_EQ(sparse_server_of(0, limbs_to_key(held.data() + i * 4), 2), 0);
  }
}

}  // namespace
}  // namespace dtrain::ps
