#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "core/rng.h"
#include "ps/shard_store.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

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
  options.consistency = Consistency::kAsync;  // row pushes are applied at once
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

std::vector<float> minus(std::vector<float> row, float lr, const std::vector<float>& grad) {
  for (size_t d = 0; d < row.size(); ++d) row[d] -= lr * grad[d];
  return row;
}

void expect_near(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t d = 0; d < got.size(); ++d) EXPECT_NEAR(got[d], want[d], 1e-6) << "element " << d;
}

const StateDict& small_dense() {
  static const StateDict dense = [] {
    StateDict d;
    d.insert("w", Tensor::from_vector({1, 2, 3}, {3}));
    return d;
  }();
  return dense;
}

TEST(SparseTablesSync, RowsAreHeldUntilTheVersionClosesAndWeightedBySamples) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.seed = 5;
  options.optimizer.type = "sgd";
  PsJob job(2, 3, options);
  const std::vector<SparseTableSpec> tables{{"emb", 2, 0.1f}};
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(small_dense(), tables);
  const std::vector<uint64_t> all{10, 20, 30, 40};
  Tensor before = Tensor::zeros({4, 2});
  c[0]->pull_rows(0, all, before);
  // Worker 2 and worker 0 push rows (key 10 from both); worker 1 none.
  const float lr = 0.5f;
  EXPECT_EQ(c[2]->push_rows(0, std::vector<uint64_t>{30, 10},
                            Tensor::from_vector({5, 6, 7, 8}, {2, 2}), lr, 0)
                .servers_dropped,
            0);
  c[0]->push_rows(0, std::vector<uint64_t>{10, 20}, Tensor::from_vector({1, 2, 3, 4}, {2, 2}), lr,
                  0);
  Tensor held = Tensor::zeros({4, 2});
  c[1]->pull_rows(0, all, held);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(row_of(held, i), row_of(before, i)) << "row " << i;
  // Dense pushes with n = 1, 2, 3 close version 0, arriving out of order.
  const std::vector<Tensor> zero{Tensor::zeros({3})};
  c[2]->push(zero, 3, lr, 0);
  c[0]->push(zero, 1, lr, 0);
  c[1]->push(zero, 2, lr, 0);
  std::vector<Tensor> dense{Tensor::zeros({3})};
  EXPECT_EQ(c[0]->pull(dense, 1), 1u);
  Tensor after = Tensor::zeros({4, 2});
  c[0]->pull_rows(0, all, after);
  // Per row sum_i n_i g_i / sum_i n_i with sum_i n_i = 6.
  expect_near(row_of(after, 0),
              minus(row_of(before, 0), lr, {(1 * 1 + 3 * 7) / 6.0f, (1 * 2 + 3 * 8) / 6.0f}));
  expect_near(row_of(after, 1), minus(row_of(before, 1), lr, {3 / 6.0f, 4 / 6.0f}));
  expect_near(row_of(after, 2), minus(row_of(before, 2), lr, {15 / 6.0f, 18 / 6.0f}));
  EXPECT_EQ(row_of(after, 3), row_of(before, 3));  // touched by no worker
  for (int s = 0; s < 2; ++s) EXPECT_EQ(c[0]->stats(s).version, 1u);
}

TEST(SparseTablesSync, RowsOfAPushTheVersionDoesNotCountAreDiscarded) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.backup_workers = 1;
  options.optimizer.type = "sgd";
  PsJob job(1, 3, options);  // one server: exact error messages
  const std::vector<SparseTableSpec> tables{{"emb", 1, 0.1f}};
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(small_dense(), tables);
  const std::vector<uint64_t> keys{50, 60};
  Tensor before = Tensor::zeros({2, 1});
  c[0]->pull_rows(0, keys, before);
  const std::vector<Tensor> zero{Tensor::zeros({3})};
  // The straggler's rows are held first, but its dense push comes too late.
  c[2]->push_rows(0, std::vector<uint64_t>{50}, Tensor::from_vector({4}, {1, 1}), 1.0f, 0);
  for (int w = 0; w < 2; ++w) {
    c[static_cast<size_t>(w)]->push_rows(0, std::vector<uint64_t>{60},
                                         Tensor::from_vector({2}, {1, 1}), 1.0f, 0);
    c[static_cast<size_t>(w)]->push(zero, 1, 1.0f, 0);
  }
  // Its next row push for version 0 (a second table's, say) arrives after the close.
  const PushResult late =
      c[2]->push_rows(0, std::vector<uint64_t>{50}, Tensor::from_vector({4}, {1, 1}), 1.0f, 0);
  EXPECT_EQ(late.servers_dropped, 1);
  EXPECT_EQ(late.version, 1u);
  EXPECT_EQ(c[2]->push(zero, 1, 1.0f, 0).servers_dropped, 1);
  Tensor after = Tensor::zeros({2, 1});
  c[0]->pull_rows(0, keys, after);
  EXPECT_EQ(after.at({0, 0}), before.at({0, 0}));  // worker 2's rows were discarded
  EXPECT_NEAR(after.at({1, 0}), before.at({1, 0}) - 2.0f, 1e-6);
  // Rows after the worker's own dense push of the version: refused.
  c[0]->push(zero, 1, 1.0f, 1);
  dtrain::testing::expect_error<CommError>(
      [&] {
        c[0]->push_rows(0, std::vector<uint64_t>{60}, Tensor::from_vector({1}, {1, 1}), 1.0f, 1);
      },
      "ps push_rows with rank 0: server 0 refused: row push from worker 0 for version 1 after "
      "its dense push; rows go first");
  dtrain::testing::expect_error<CommError>(
      [&] {
        c[1]->push_rows(0, std::vector<uint64_t>{60}, Tensor::from_vector({1}, {1, 1}), 1.0f, 3);
      },
      "ps push_rows with rank 0: server 0 refused: future row push for version 3: server 0 is "
      "at version 1");
}

// SparseTable against a plain map over enough keys to grow its index several
// times, with keys that share their low or high bits (the index's hash must
// spread them) and duplicates within a batch; sgd applies each pushed row in
// arrival order, so the reference's sums are exact.
TEST(SparseTableIndex, MatchesAMapOverManyKeysDuplicatesAndCollidingBits) {
  optim::OptimizerConfig sgd;
  sgd.type = "sgd";
  const SparseTableSpec spec{"emb", 3, 0.1f};
  SparseTable table(spec, 2, 9, sgd);
  std::map<uint64_t, std::vector<float>> expected;
  Rng rng(5);
  for (int batch = 0; batch < 40; ++batch) {
    std::vector<uint64_t> keys;
    for (int i = 0; i < 97; ++i) {
      const uint64_t k = rng.below(3000);
      keys.push_back(batch % 3 == 0 ? k << 40 : batch % 3 == 1 ? k * 1048576 : k);
      if (i % 10 == 0) keys.push_back(keys.front());  // a duplicate
    }
    for (uint64_t k : keys) {
      if (expected.count(k) == 0) expected[k] = init_row(9, 2, k, 0.1f, 3);
    }
    std::vector<float> grads(keys.size() * 3);
    for (float& g : grads) g = rng.uniform() - 0.5f;
    if (batch % 2 == 0) {  // rows created by a read, then pushed
      std::vector<float> read(keys.size() * 3);
      table.read_rows(keys, read);
      for (size_t i = 0; i < keys.size(); ++i) {
        EXPECT_EQ(std::vector<float>(read.begin() + i * 3, read.begin() + i * 3 + 3),
                  expected[keys[i]]);
      }
    }
    table.apply(keys, grads, 0.5f);
    for (size_t i = 0; i < keys.size(); ++i) {
      for (size_t d = 0; d < 3; ++d) expected[keys[i]][d] += -0.5f * grads[i * 3 + d];
    }
  }
  ASSERT_EQ(table.rows(), expected.size());
  std::vector<uint64_t> all;
  for (const auto& [k, row] : expected) all.push_back(k);
  const auto views = table.row_bytes(all);
  for (size_t i = 0; i < all.size(); ++i) {
    std::vector<float> row(3);
    ASSERT_EQ(views[i].size(), 3 * sizeof(float));
    std::memcpy(row.data(), views[i].data(), views[i].size());
    EXPECT_EQ(row, expected[all[i]]) << "key " << all[i];
  }
  EXPECT_EQ(table.rows(), expected.size());  // reading existing rows creates none
  // Export lists the rows sorted by key; a fresh table imports them exactly.
  StateDict state;
  table.export_state(state);
  SparseTable copy(spec, 2, 9, sgd);
  copy.import_state(state);
  ASSERT_EQ(copy.rows(), expected.size());
  std::vector<float> read(all.size() * 3);
  copy.read_rows(all, read);
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(std::vector<float>(read.begin() + i * 3, read.begin() + i * 3 + 3), expected[all[i]]);
  }
  const Tensor& keys = state.at("sparse.emb.keys");
  for (int64_t i = 0; i < keys.size(0); ++i) {
    EXPECT_EQ(limbs_to_key(keys.data() + i * 4), all[static_cast<size_t>(i)]);
  }
  // A key listed twice is refused and leaves the table as it was.
  keys.data()[4] = keys.data()[0];
  keys.data()[5] = keys.data()[1];
  keys.data()[6] = keys.data()[2];
  keys.data()[7] = keys.data()[3];
  dtrain::testing::expect_error<UsageError>(
      [&] { copy.import_state(state); },
      fmt::format("ps sparse state: table 'emb' lists key {} twice", all[0]));
  EXPECT_EQ(copy.rows(), expected.size());
}

// An imported table's index (its size and hash shift moved with it) keeps
// finding the imported rows and keeps growing: reading old and new keys gives
// what the table it was exported from gives, row for row.
TEST(SparseTableIndex, AnImportedTableKeepsGrowingAndFindsItsRows) {
  optim::OptimizerConfig sgd;
  sgd.type = "sgd";
  const SparseTableSpec spec{"emb", 2, 0.1f};
  SparseTable table(spec, 0, 3, sgd);
  Rng rng(8);
  std::vector<uint64_t> old_keys, all_keys;
  for (int i = 0; i < 1500; ++i) old_keys.push_back(rng.next_u64());
  std::vector<float> grads(old_keys.size() * 2, 0.25f);
  table.apply(old_keys, grads, 1.0f);  // old rows differ from their init
  StateDict state;
  table.export_state(state);
  SparseTable copy(spec, 0, 3, sgd);
  copy.import_state(state);
  all_keys = old_keys;
  for (int i = 0; i < 5000; ++i) all_keys.push_back(rng.below(1 << 20) << 30);
  std::vector<float> want(all_keys.size() * 2), got(all_keys.size() * 2);
  table.read_rows(all_keys, want);
  copy.read_rows(all_keys, got);
  EXPECT_EQ(got, want);
  EXPECT_EQ(copy.rows(), table.rows());
  EXPECT_GT(copy.rows(), 6000u);  // grown past the imported index several times
  EXPECT_NE(got[0], init_row(3, 0, all_keys[0], 0.1f, 2)[0]);
}

// From 2 MiB (131072 entries) the index is its own huge-page mapping
// (SparseTable::allocate_index): a table grown past it, and an imported copy
// of it grown further, find every row, each its init row plus its update.
TEST(SparseTableIndex, AnIndexPastTwoMebibytesFindsEveryRow) {
  optim::OptimizerConfig sgd;
  sgd.type = "sgd";
  const SparseTableSpec spec{"emb", 1, 0.1f};
  SparseTable table(spec, 1, 4, sgd);
  Rng rng(21);
  std::vector<uint64_t> keys(80000);
  for (uint64_t& k : keys) k = rng.next_u64() | 1;  // odd: distinct from the later ones
  std::vector<float> grads(keys.size(), 1.0f);
  for (size_t at = 0; at < keys.size(); at += 4096) {
    const size_t n = std::min<size_t>(4096, keys.size() - at);
    table.apply(std::span(keys).subspan(at, n), std::span(grads).subspan(at, n), 0.5f);
  }
  ASSERT_EQ(table.rows(), keys.size());  // 2 * rows > 131072: the mapped index
  StateDict state;
  table.export_state(state);
  SparseTable copy(spec, 1, 4, sgd);
  copy.import_state(state);
  std::vector<uint64_t> all = keys;
  for (int i = 0; i < 60000; ++i) all.push_back(rng.next_u64() & ~uint64_t{1});
  std::vector<float> got(all.size()), again(all.size());
  copy.read_rows(all, got);  // grows the imported index past 4 MiB
  table.read_rows(all, again);
  EXPECT_EQ(got, again);
  for (size_t i = 0; i < all.size(); i += 997) {
    const float init = init_row(4, 1, all[i], 0.1f, 1)[0];
    EXPECT_EQ(got[i], i < keys.size() ? init - 0.5f : init) << "key " << all[i];
  }
  EXPECT_EQ(copy.rows(), all.size());
}

// The rule itself never changes: a checkpoint's rows and a replacement's
// range are placed by it. Values computed by the tree before issue 16
// (3ab3116) and by this one, for power-of-two and other server counts.
TEST(SparsePlacement, TheRuleIsThatOfEarlierVersions) {
  const std::vector<uint64_t> keys{0, 1, 12345, ~uint64_t{0}, uint64_t{1} << 63};
  const std::vector<std::tuple<int, uint32_t, std::vector<int>>> pinned{
      {2, 0, {1, 1, 1, 0, 1}}, {2, 2, {0, 1, 1, 1, 1}}, {3, 0, {1, 0, 2, 1, 2}},
      {3, 2, {1, 2, 2, 2, 2}}, {4, 0, {3, 3, 3, 0, 3}}, {4, 2, {0, 3, 1, 1, 3}},
      {7, 0, {5, 4, 3, 2, 4}}, {7, 2, {1, 2, 1, 1, 1}}};
  for (const auto& [servers, table, want] : pinned) {
    std::vector<int> got(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) got[i] = sparse_server_of(table, keys[i], servers);
    EXPECT_EQ(got, want) << servers << " servers, table " << table;
  }
}

// The batch placement is the one-key rule, for power-of-two and other server
// counts, and first_key_not_on finds the first stray key.
TEST(SparsePlacement, BatchesFollowTheOneKeyRule) {
  Rng rng(12);
  std::vector<uint64_t> keys{0, 1, ~uint64_t{0}, uint64_t{1} << 63};
  for (int i = 0; i < 2000; ++i) keys.push_back(rng.next_u64());
  for (int servers = 1; servers <= 7; ++servers) {
    for (uint32_t table = 0; table < 3; ++table) {
      std::vector<int> out(keys.size(), -1);
      sparse_servers_of(table, keys, servers, out);
      std::vector<int> one(keys.size());
      for (size_t i = 0; i < keys.size(); ++i) one[i] = sparse_server_of(table, keys[i], servers);
      ASSERT_EQ(out, one) << servers << " servers, table " << table;
      for (int s = 0; s < servers; ++s) {
        const size_t want = static_cast<size_t>(
            std::find_if(one.begin(), one.end(), [&](int o) { return o != s; }) - one.begin());
        EXPECT_EQ(first_key_not_on(table, keys, s, servers), want);
        std::vector<uint64_t> own;
        for (size_t i = 0; i < keys.size(); ++i) {
          if (one[i] == s) own.push_back(keys[i]);
        }
        EXPECT_EQ(first_key_not_on(table, own, s, servers), own.size());
      }
    }
  }
  std::vector<int> short_out(3);
  dtrain::testing::expect_error<UsageError>(
      [&] { sparse_servers_of(0, keys, 2, short_out); },
      fmt::format("ps sparse placement: 3 outputs for {} keys", keys.size()));
  dtrain::testing::expect_error<UsageError>([&] { (void)first_key_not_on(0, keys, 0, 0); },
                                            "ps sparse placement: 0 servers; need at least 1");
}

}  // namespace
}  // namespace dtrain::ps
